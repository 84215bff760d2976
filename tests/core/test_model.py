"""The plain UNet: shapes, gradients, widths, and the input sizes it takes."""

import pytest
import torch

from unet_opt.config.schema import ModelConfig
from unet_opt.core.model import build_model
from unet_opt.core.unet import UNet


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
@pytest.mark.parametrize("out_channels", [1, 24])
def test_output_matches_input_size_for_any_depth(depth, out_channels):
    multiple = 2**depth
    model = UNet(out_channels=out_channels, base_channels=4, depth=depth)
    x = torch.rand(2, 3, 2 * multiple, 3 * multiple)  # non-square, smallest legal sides
    # logits keep the input's height and width, one channel per class (one for binary)
    assert model(x).shape == (2, out_channels, 2 * multiple, 3 * multiple)


@pytest.mark.parametrize("depth", [1, 3])
def test_every_parameter_gets_a_gradient(depth):
    model = UNet(out_channels=5, base_channels=4, depth=depth)
    model(torch.rand(2, 3, 16, 24)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # every layer takes part in the forward pass
    assert missing == []


def test_widths_double_per_level():
    model = UNet(out_channels=3, base_channels=8, depth=3)
    widths = [block.layers[0].out_channels for block in model.encoder.blocks]
    assert widths == [8, 16, 32, 64]


def test_bad_input_size_names_the_size_to_use():
    model = build_model(ModelConfig(base_channels=4, depth=3), out_channels=2)
    with pytest.raises(ValueError, match=r"multiples of 8; resize to 40x48"):
        model(torch.rand(1, 3, 38, 50))
