"""A UNet decoder over a torchvision backbone (`model.encoder`), optionally ImageNet-pretrained
(`model.pretrained`).

The backbone is cut into five stages whose outputs have strides 2, 4, 8, 16 and 32; the decoder goes
back up through them, concatenating each stage's features, as the plain UNet does with its own encoder.
Inputs of any size work: they are padded to a multiple of 32 and the logits cropped back.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unet_opt.config.schema import ModelConfig
from unet_opt.core.unet import Block
from unet_opt.errors import UserError

ENCODERS = next(f for f in fields(ModelConfig) if f.name == "encoder").metadata["choices"]
STRIDE = 32
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_model(name: str) -> nn.Module:
    from torchvision import models

    return models.get_model(name, weights=None)


def stages_of(name: str, backbone: nn.Module) -> nn.ModuleList:
    """The backbone's layers grouped into the five stages that end at strides 2, 4, 8, 16 and 32."""
    if name.startswith("resnet"):
        b = backbone
        return nn.ModuleList([nn.Sequential(b.conv1, b.bn1, b.relu), nn.Sequential(b.maxpool, b.layer1),
                              b.layer2, b.layer3, b.layer4])
    # MobileNet and EfficientNet: a flat `features` list; a stage ends where the next layer halves the size
    layers, sizes, x = list(backbone.features), [], torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        backbone.eval()
        for layer in layers:
            x = layer(x)
            sizes.append(x.shape[-1])
    stages, start = [], 0
    for i, size in enumerate(sizes):
        if i + 1 == len(sizes) or sizes[i + 1] < size:
            stages.append(nn.Sequential(*layers[start:i + 1]))
            start = i + 1
    return nn.ModuleList(stages)


class EncoderUNet(nn.Module):
    """Backbone stages down, then up: bilinear 2x, concatenate the stage of that stride, a Block; a last
    up-sampling to the input's size. `base_channels` sets the decoder's widths (16 * base ... base)."""

    def __init__(self, encoder: str, out_channels: int, base_channels: int = 16):
        super().__init__()
        backbone = torchvision_model(encoder)
        self.encoder_name = encoder
        self.stages = stages_of(encoder, backbone)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            self.stages.eval()
            widths = [f.shape[1] for f in self.features(torch.zeros(1, 3, 64, 64))]
        self.stages.train()
        decoder = [base_channels * 2**i for i in (4, 3, 2, 1, 0)]  # after the stride 16, 8, 4, 2 and 1 blocks
        ins = [widths[4] + widths[3], decoder[0] + widths[2], decoder[1] + widths[1], decoder[2] + widths[0],
               decoder[3]]
        self.blocks = nn.ModuleList(Block(i, o) for i, o in zip(ins, decoder))
        self.head = nn.Conv2d(decoder[-1], out_channels, 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std  # the loader's [-1, 1] -> ImageNet's normalisation
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out  # strides 2, 4, 8, 16, 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, -w % STRIDE, 0, -h % STRIDE))
        features = self.features(padded)
        y = features[-1]
        for block, skip in zip(self.blocks, features[-2::-1]):
            y = block(torch.cat([F.interpolate(y, size=skip.shape[-2:], mode="bilinear"), skip], dim=1))
        y = self.blocks[-1](F.interpolate(y, size=padded.shape[-2:], mode="bilinear"))
        return self.head(y)[..., :h, :w]


def load_pretrained(model: EncoderUNet, source: str) -> None:
    """`source` "imagenet": torchvision's weights (downloaded once, then cached); else a state_dict file
    of the torchvision model (a `torchvision.models.<name>(...).state_dict()`)."""
    backbone = torchvision_model(model.encoder_name)
    backbone.load_state_dict(backbone_state(model.encoder_name, source, backbone), strict=False)
    model.stages.load_state_dict(stages_of(model.encoder_name, backbone).state_dict())


def backbone_state(name: str, source: str, backbone: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The weights of `source` for torchvision's `name`, checked to be exactly that architecture's
    (its classifier aside): a state_dict of another network is refused, not half loaded."""
    if source == "imagenet":
        state = imagenet_state(name)
    else:
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:  # not a file torch wrote, a whole pickled model (weights_only refuses it)...
            raise UserError(f"model.pretrained: cannot read {source} as a state_dict ({type(e).__name__}); save "
                            f"one with torch.save(torchvision.models.{name}(...).state_dict(), PATH)") from None
    own = (backbone or torchvision_model(name)).state_dict()
    if not isinstance(state, dict) or without_classifier(state) != without_classifier(own) or any(
            getattr(state[k], "shape", None) != own[k].shape for k in without_classifier(own)):
        raise UserError(f"model.pretrained: {source} is not a state_dict of torchvision's {name}; save one with "
                        f"torch.save(torchvision.models.{name}(...).state_dict(), PATH)")
    return {k: state[k] for k in without_classifier(own)}


def without_classifier(state: dict) -> set[str]:
    """The names of a torchvision model's tensors but its classifier's, which the UNet does not use."""
    return {k for k in state if not k.startswith(("fc.", "classifier."))}


def imagenet_state(name: str) -> dict[str, torch.Tensor]:
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False)
    except OSError as e:  # offline (URLError is an OSError), or a firewall
        raise UserError(f"model.pretrained = \"imagenet\": cannot download {weights.url} ({type(e).__name__}); "
                        f"connect once (it is cached in {file}), or copy the file there, or pass "
                        f"model.pretrained=PATH to a state_dict file") from None
    except Exception as e:  # a download cut short and cached as it was
        raise UserError(f"model.pretrained = \"imagenet\": the cached {file} cannot be read ({type(e).__name__}); "
                        f"delete it and run the command again") from None


def check_pretrained(encoders: list[str], source: str) -> None:
    """Fail now, in one line, rather than in every trial: the weights of each (searched) encoder are
    reachable (downloaded and cached once here) and are that encoder's. The plain UNet has none to load."""
    if not source:
        return
    for encoder in (e for e in encoders if e != "none"):
        if source != "imagenet" and not Path(source).is_file():
            raise UserError(f"model.pretrained: no file {source}; pass \"imagenet\" or the path of a state_dict file")
        backbone_state(encoder, source)
