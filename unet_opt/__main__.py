from unet_opt.cli.launch import entry

entry()
