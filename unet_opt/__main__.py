from unet_opt.cli.app import main

main()
