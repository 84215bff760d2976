"""A standalone checkpoint: weights + resolved config + class table + split, loadable with weights_only=True."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unet_opt.config.schema import Config, to_toml
from unet_opt.config.space_file import stored_config
from unet_opt.core.data import ClassTable
from unet_opt.core.model import build_model
from unet_opt.errors import UserError

FORMAT = "unet-opt-checkpoint/1"
ARTIFACT = "checkpoint/model.pt"  # where a run keeps its checkpoint, for `evaluate RUN` and models:/ URIs


@dataclass
class Checkpoint:
    model: nn.Module
    cfg: Config
    classes: ClassTable
    binary: bool
    split: dict[str, list[str]]
    trained_on: tuple[str, ...] = ("train",)


def save_checkpoint(path: Path, model: nn.Module, cfg: Config, classes: ClassTable, binary: bool,
                    split: dict[str, list[str]], trained_on: tuple[str, ...] = ("train",)) -> None:
    """Only tensors, strings, numbers, lists and dicts: nothing that needs pickle to load. `trained_on`: the
    parts of the split the model learned from (a retrain: train and val)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "config_toml": to_toml(cfg), "class_names": list(classes.names),
                "class_colors": [list(c) for c in classes.colors], "binary": binary, "split": split,
                "trained_on": list(trained_on)}, tmp)
    tmp.replace(path)  # never a half-written checkpoint under the real name


def stage_checkpoint(path: Path, folder: Path) -> None:
    """Copy a checkpoint into a folder about to be logged as a run's artifacts, at ARTIFACT."""
    (folder / ARTIFACT).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, folder / ARTIFACT)


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's reason (a KeyError for a file that is no zip archive) tells a user nothing
        raise UserError(f"{path} is not a unet-opt checkpoint; pass a file written by "
                        f"`unet-opt retrain` or a models:/ URI") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise UserError(f"{path} is not a unet-opt checkpoint; pass a file written by `unet-opt retrain`")
    try:
        cfg = stored_config(raw["config_toml"], f"{path} (config)")
        classes = ClassTable(tuple(raw["class_names"]), tuple(tuple(c) for c in raw["class_colors"]))
        model = build_model(cfg.model, 1 if raw["binary"] else len(classes))
        model.load_state_dict(raw["state_dict"])  # strict: every weight present, with its shape
        return Checkpoint(model.eval(), cfg, classes, raw["binary"], raw["split"],
                          tuple(raw.get("trained_on", ("train",))))  # older checkpoints: train alone, or unknown
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a damaged or hand-made file
        raise UserError(f"{path} is a damaged unet-opt checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        f"pass a file written by `unet-opt retrain`, or its models:/ URI") from None
