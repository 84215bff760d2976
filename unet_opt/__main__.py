from unet_opt.cli import main

main()
