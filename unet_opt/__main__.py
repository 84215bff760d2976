from unet_opt.cli.app import entry

entry()
