"""unet-opt: tune and track UNet segmentation models with Optuna and MLflow."""

__version__ = "0.1.0"
