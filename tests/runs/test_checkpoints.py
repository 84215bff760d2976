"""Checkpoints: weights only, and crafted files refused with one line."""

import pytest
import torch

from unet_opt.config.schema import to_toml
from unet_opt.config.space_file import load_config
from unet_opt.core.data import ClassTable
from unet_opt.core.model import build_model
from unet_opt.errors import UserError
from unet_opt.runs.checkpoint import FORMAT, load_checkpoint


class Payload:
    """Anything that needs pickle to load: refused by weights_only=True."""


def test_checkpoints_load_weights_only(tmp_path):
    torch.save({"format": FORMAT, "state_dict": {}, "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="is not a unet-opt checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.parametrize("damage", ["empty state_dict", "missing keys", "missing config", "wrong shapes"])
def test_crafted_checkpoints_are_one_error_line(home, cli, damage):
    cfg = load_config("default")
    model = build_model(cfg.model, 24)
    raw = {"format": FORMAT, "state_dict": model.state_dict(), "config_toml": to_toml(cfg),
           "class_names": list(ClassTable.drone().names), "class_colors": [list(c) for c in ClassTable.drone().colors],
           "binary": False, "split": {"train": [], "val": [], "test": []}}
    if damage == "empty state_dict":
        raw["state_dict"] = {}
    elif damage == "missing keys":
        raw["state_dict"] = dict(list(raw["state_dict"].items())[:3])
    elif damage == "missing config":
        del raw["config_toml"]
    else:
        raw["class_names"] = raw["class_names"][:5]  # 5 output channels in the weights' place of 24
        raw["class_colors"] = raw["class_colors"][:5]
    torch.save(raw, home / "crafted.pt")
    code, out, err = cli("evaluate", "crafted.pt")
    assert code == 2 and err.startswith("error: crafted.pt is a damaged unet-opt checkpoint") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
