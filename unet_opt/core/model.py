"""The model a run trains: the plain UNet (`unet`) or a UNet decoder over a torchvision encoder (`encoders`)."""

from __future__ import annotations

from torch import nn

from unet_opt.config.schema import ModelConfig
from unet_opt.core.encoders import EncoderUNet, load_pretrained
from unet_opt.core.unet import UNet


def build_model(cfg: ModelConfig, out_channels: int, pretrained: bool = False) -> nn.Module:
    """One logit for binary segmentation, one per class otherwise. `pretrained`: load the encoder's
    `cfg.pretrained` weights (training only: a checkpoint or a logged model brings its own)."""
    if cfg.encoder == "none":
        return UNet(out_channels=out_channels, base_channels=cfg.base_channels, depth=cfg.depth)
    model = EncoderUNet(cfg.encoder, out_channels, cfg.base_channels)
    if pretrained and cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    return model
