"""Torchvision encoders under a UNet decoder, and their pretrained weights."""

import pytest
import torch

from unet_opt.config.schema import ModelConfig
from unet_opt.core.encoders import ENCODERS
from unet_opt.core.model import build_model
from unet_opt.errors import UserError


@pytest.mark.parametrize("encoder", ENCODERS)
def test_each_encoder_gives_logits_at_the_input_s_size(encoder):
    model = build_model(ModelConfig(encoder=encoder, base_channels=4), 5).eval()
    sizes = [(32, 48), (64, 96)] if encoder == "none" else [(24, 36), (40, 60), (56, 84)]  # odd 3:2 sizes
    with torch.no_grad():
        for h, w in sizes:
            assert model(torch.zeros(2, 3, h, w)).shape == (2, 5, h, w)


def test_pretrained_weights_load_from_a_state_dict_file(tmp_path):
    import torchvision

    source = torchvision.models.resnet18()
    torch.nn.init.constant_(source.conv1.weight, 0.125)
    torch.save(source.state_dict(), tmp_path / "resnet18.pt")
    cfg = ModelConfig(encoder="resnet18", pretrained=str(tmp_path / "resnet18.pt"))
    assert (build_model(cfg, 3, pretrained=True).stages[0][0].weight == 0.125).all()
    assert not (build_model(cfg, 3).stages[0][0].weight == 0.125).all()  # a checkpoint brings its own weights
    for other in ("resnet50", "resnet34"):  # resnet34 holds every tensor of resnet18, and more: refused too
        torch.save(torchvision.models.get_model(other).state_dict(), tmp_path / "other.pt")
        with pytest.raises(UserError, match="not a state_dict of torchvision's resnet18"):
            build_model(ModelConfig(encoder="resnet18", pretrained=str(tmp_path / "other.pt")), 3, pretrained=True)
