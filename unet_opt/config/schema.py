"""Configuration: one frozen dataclass per section, the resolved `Config`, and its TOML form.

Space files, `--set` and validation live in `space_file`; this module only holds the values.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from unet_opt.config.paths import redact_url

METRICS = ("val_dice", "val_f1_macro", "val_f1_weighted", "val_miou", "val_pixel_accuracy", "val_loss")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    """"synthetic" (the embedded generator) or a folder holding images and masks."""
    num_classes: int = 24
    """Classes in the masks, "unlabeled" included (the drone data has 24)."""
    ignore_index: int = 0
    """Mask value left out of the loss and the metrics (drone: 0, "unlabeled"); -1 for none."""
    image_size: int = 64
    """Training height in pixels; the width follows the data's aspect ratio."""
    eval_size: int = 0
    """Height of the frame every trial of a study is scored at (the width follows the aspect): the model's
    logits are resized to it and compared with masks decoded at it, so trials of any image_size answer
    the same question. 0: the largest image_size the study's space can draw, fixed when the study is
    created; -1: each trial's own frame (how studies made before this field were scored)."""
    aspect: str = field(default="data", metadata={"choices": ("data", "square")})
    """"data": width from the images' aspect ratio (3:2 -> 64x96); "square": NxN."""
    augment: str = field(default="crop", metadata={"choices": ("none", "flip", "crop")})
    """Training-batch augmentation, image and mask together: "flip" (horizontal and vertical),
    "crop" (random resized crop, then flips) or "none"; val and test are never augmented."""
    val_fraction: float = 0.15
    """Share of the images used to score trials."""
    test_fraction: float = 0.15
    """Share of the images held out for the retrained model's test."""
    split_seed: int = 42
    """Seed of the train/val/test split; the split is stored with the study."""
    synthetic_images: int = 120
    """Number of images the synthetic generator makes."""
    binary: str = field(default="", metadata={"choices": ("", "mean")})
    """"mean": one foreground class = grayscale mask above its mean (the original study's rule)."""
    foreground: list[str] = field(default_factory=list)
    """Class names that form the foreground of a binary task, e.g. ["car", "person"]."""


@dataclass(frozen=True)
class ModelConfig:
    base_channels: int = 16
    """Channels of the first level; each level down doubles them (the original study used 64)."""
    depth: int = 3
    """Number of 2x down-samplings; image sides must be multiples of 2**depth."""
    encoder: str = field(default="none", metadata={"choices": ("none", "resnet18", "resnet34", "resnet50",
                                                               "mobilenet_v3_large", "efficientnet_b0")})
    """"none": the plain UNet above; else a UNet decoder (widths 16 * base_channels ... base_channels) over
    this torchvision backbone, whose stages replace `depth`."""
    pretrained: str = ""
    """The encoder's initial weights: "" random, "imagenet" torchvision's (downloaded once, then cached),
    or the path of a state_dict file of the torchvision model."""


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 0.01
    """Peak learning rate (after the warm-up; the schedule scales it down)."""
    batch_size: int = 8
    """GLOBAL batch, a multiple of 4, split evenly over the processes."""
    epochs: int = 10
    """Most epochs a trial may run; early stopping and pruning may end it sooner."""
    patience: int = 5
    """Stop after this many epochs without a better validation metric."""
    weight_decay: float = 0.0
    """Weight decay (decoupled from the gradient with adamw)."""
    loss: str = field(default="ce+dice", metadata={"choices": ("ce", "dice", "ce+dice", "focal")})
    """Cross-entropy, soft Dice over the classes present, their sum, or focal loss (gamma 2)."""
    class_weights: str = field(default="inverse", metadata={"choices": ("none", "inverse", "sqrt_inverse")})
    """Per-class loss weights from the training split's pixel frequencies: 1/f, 1/sqrt(f) or none."""
    optimizer: str = field(default="adam", metadata={"choices": ("adam", "adamw", "sgd")})
    """Adam, AdamW, or SGD with Nesterov momentum."""
    momentum: float = 0.9
    """SGD's (Nesterov) momentum; 0 for plain SGD."""
    schedule: str = field(default="poly", metadata={"choices": ("constant", "cosine", "poly", "onecycle")})
    """Learning rate over the epochs, stepped every optimizer step: constant, cosine to 0, polynomial
    (power 0.9) to 0, or one-cycle."""
    warmup_epochs: int = 0
    """Epochs of linear warm-up to `lr` before the schedule (onecycle: its rising phase)."""
    grad_clip: float = 0.0
    """Clip the gradients' total norm to this; 0 for no clipping."""
    seed: int = 0
    """Seed of weights, shuffling and augmentation (a trial adds its number)."""
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    """"auto" picks CUDA when available."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on the CPU)."""
    channels_last: bool = True
    """channels_last memory format for the model's training (faster on CUDA and on the CPU's oneDNN)."""
    compile: bool = False
    """torch.compile the model (pays off on GPUs for long trials; compiling takes a minute)."""


@dataclass(frozen=True)
class SearchConfig:
    study: str = ""
    """Optuna study and MLflow experiment name; empty: the space file's name."""
    storage: str = ""
    """Optuna storage URL; empty: sqlite:///<home>/studies/unet-opt.db."""
    tracking_uri: str = ""
    """MLflow tracking URI; empty: sqlite:///<home>/mlruns/mlflow.db."""
    trials: int = 30
    """Finished (complete or pruned) trials the study should end up with."""
    timeout: float = 0.0
    """Seconds after which no new trial starts; 0 for no limit."""
    sampler: str = field(default="tpe", metadata={"choices": ("tpe", "random")})
    """Optuna sampler."""
    pruner: str = field(default="contenders",
                        metadata={"choices": ("contenders", "hyperband", "median", "halving", "none")})
    """contenders: after epochs 1, 3, 6 and 12 a trial goes on in the top third of the trials scheduled to
    run past the next of those epochs (after epoch 1: the top two thirds); hyperband, median, halving:
    Optuna's (hyperband with a study-wide check)."""
    brackets: int = 2
    """Hyperband brackets (`pruner = "hyperband"`): 2 judge a trial first after epoch 1 or 3; a third after 9,
    a fourth after 27... The last bracket's first epoch (3 with 2) is also where every trial is judged
    against the whole study."""
    seed: int = 0
    """Sampler seed."""
    startup_trials: int = 8
    """Random trials before TPE starts modelling."""
    metric: str = field(default="val_dice", metadata={"choices": METRICS})
    """Validation metric a trial is scored by (its best epoch's value)."""

    @property
    def goal(self) -> "Goal":
        """The metric and its direction: derived here only."""
        return Goal(self.metric, maximize=self.metric != "val_loss")


@dataclass(frozen=True)
class Goal:
    """What a run is scored by: `metric`, better when higher (`maximize`) or lower."""

    metric: str = "val_dice"
    maximize: bool = True

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    def improves(self, value: float, best: float | None) -> bool:
        if math.isnan(value):
            return False
        return best is None or (value > best if self.maximize else value < best)


# What a study (or checkpoint) made before these fields existed did: its stored config lacks them, and it
# resumes, retrains and is evaluated with these rather than with today's defaults (the training recipe;
# scoring every trial at its own frame)
BEFORE_THE_FIELD_EXISTED = {"train.loss": "ce", "train.class_weights": "none", "train.optimizer": "adam",
                            "train.momentum": 0.9, "train.schedule": "constant", "train.warmup_epochs": 0,
                            "train.grad_clip": 0.0, "model.encoder": "none", "model.pretrained": "",
                            "data.eval_size": -1}

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "search": SearchConfig}
SHORT_NAMES = {"lr": "train.lr", "batch_size": "train.batch_size", "epochs": "train.epochs",
               "image_size": "data.image_size"}
PARAM_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Param:
    """One searched field: `[space.lr] type = "float", low = 1e-4, high = 1e-1, log = true`."""

    name: str  # "section.field"
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def values(self) -> list | None:
        """Every value an int/categorical param can take (None for continuous ones)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None


@dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    space: dict[str, Param] = field(default_factory=dict)
    source: str = "<defaults>"

    def get(self, dotted: str) -> Any:
        section, key = dotted.split(".")
        return getattr(getattr(self, section), key)

    def values_of(self, dotted: str) -> list:
        """Every value a field may take: its fixed value, or the searched range's values (or its ends)."""
        p = self.space.get(dotted)
        if p is None:
            return [self.get(dotted)]
        return p.values() or [p.low, p.high]

    def with_eval_size(self) -> "Config":
        """`data.eval_size = 0` resolved: the largest image_size the space can draw. Derived here only, from
        the config alone, so that every process and machine of a study finds the same frame."""
        if self.data.eval_size:
            return self
        return self.replace({"data.eval_size": max(self.values_of("data.image_size"))})

    def replace(self, values: dict[str, Any]) -> "Config":
        """A copy with `{"train.lr": 0.003, ...}` applied (values already checked)."""
        sections = {name: getattr(self, name) for name in SECTIONS}
        for dotted, value in values.items():
            section, key = dotted.split(".")
            sections[section] = dataclasses.replace(sections[section], **{key: value})
        return dataclasses.replace(self, **sections)

    def flat(self) -> dict[str, Any]:
        """Every resolved field as `section.key` -> value."""
        return {f"{name}.{f.name}": getattr(getattr(self, name), f.name)
                for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}

    def for_trial(self, params: dict[str, Any], number: int) -> "Config":
        """The config trial `number` trains with: the sampled `params`, and a seed of its own. Built here
        only, so that a retrain trains exactly what the trial trained."""
        return self.replace({**params, "train.seed": self.train.seed + number})

    def params(self) -> dict[str, Any]:
        """What MLflow logs as a run's params: `flat()` with any password in a URL masked."""
        return {k: redact_url(v) if isinstance(v, str) else v for k, v in self.flat().items()}


# ---------------------------------------------------------------------------------------------
# Writing a resolved config back as TOML (config.toml artifact)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                        ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def to_toml(cfg: Config, redact=lambda s: s) -> str:
    """The resolved config, one table per section, then the space it was sampled from."""
    lines = [f"# resolved from {cfg.source}"]
    for name, cls in SECTIONS.items():
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(cls):
            value = getattr(getattr(cfg, name), f.name)
            if name == "search" and f.name in ("storage", "tracking_uri"):
                value = redact(value)
            lines.append(f"{f.name} = {toml_value(value)}")
    for p in cfg.space.values():
        lines.append(f'\n[space."{p.name}"]')
        lines.append(f'type = "{p.type}"')
        for key in ("low", "high", "step", "choices"):
            v = getattr(p, key)
            if v not in (None, ()):
                lines.append(f"{key} = {toml_value(v)}")
        if p.log:
            lines.append("log = true")
    return "\n".join(lines) + "\n"
