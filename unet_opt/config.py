"""Configuration: one dataclass per section, search-space files (TOML), `--set` overrides, validation.

Precedence: command-line flags and `--set` > the space file > the dataclass defaults. A field that
`--set` fixes is taken out of the search space, so `--set train.epochs=3` really means 3 epochs.
Every mistake raises `UserError` naming the key, the file and what was expected.
"""

import dataclasses
import json
import math
import os
import re
import sys
import sysconfig
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from unet_opt.errors import UserError

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


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 0.01
    """Adam learning rate."""
    batch_size: int = 8
    """GLOBAL batch, a multiple of 4, split evenly over the processes."""
    epochs: int = 10
    """Most epochs a trial may run; early stopping and pruning may end it sooner."""
    patience: int = 5
    """Stop after this many epochs without a better validation metric."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    seed: int = 0
    """Seed of weights, shuffling and augmentation (a trial adds its number)."""
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    """"auto" picks CUDA when available."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on the CPU)."""
    channels_last: bool = True
    """channels_last memory format on CUDA (ignored on the CPU)."""
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
    pruner: str = field(default="hyperband", metadata={"choices": ("hyperband", "median", "halving", "none")})
    """Optuna pruner."""
    brackets: int = 2
    """Hyperband brackets: 2 judge a trial first after epoch 1 or 3; a third after 9, a fourth after 27...
    The last bracket's first epoch (3 with 2) is also where every trial is judged against the whole study."""
    seed: int = 0
    """Sampler seed."""
    startup_trials: int = 8
    """Random trials before TPE starts modelling."""
    metric: str = field(default="val_dice", metadata={"choices": METRICS})
    """Validation metric a trial is scored by (its best epoch's value)."""

    @property
    def direction(self) -> str:
        return "minimize" if self.metric == "val_loss" else "maximize"


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

    def params(self) -> dict[str, Any]:
        """What MLflow logs as a run's params: `flat()` with any password in a URL masked."""
        return {k: redact_url(v) if isinstance(v, str) else v for k, v in self.flat().items()}


@dataclass(frozen=True)
class Paths:
    """Where a project folder keeps its studies, runs and caches (`--home`, default: the cwd)."""

    home: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None) -> "Paths":
        return cls(Path(home or os.environ.get("UNET_OPT_HOME") or ".").resolve())

    @property
    def studies(self) -> Path:
        return self.home / "studies"

    @property
    def mlruns(self) -> Path:
        return self.home / "mlruns"

    @property
    def cache(self) -> Path:
        return self.studies / "cache"

    @property
    def artifacts(self) -> Path:
        return self.mlruns / "artifacts"

    def storage_url(self, given: str | None = None) -> str:
        """`--storage` when given, else this folder's SQLite file."""
        return given or f"sqlite:///{self.studies / 'unet-opt.db'}"

    def tracking_uri(self, given: str | None = None) -> str:
        """`--tracking-uri` when given, else MLFLOW_TRACKING_URI, else this folder's MLflow database."""
        return given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlruns / 'mlflow.db'}"


def redact_url(url: str) -> str:
    """`postgresql://me:secret@db/x` -> `postgresql://me:***@db/x`: passwords never reach logs or MLflow."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo.split(':')[0]}:***@{host}"))


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///PATH` storage or tracking URL; None for a server or other store."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


# ---------------------------------------------------------------------------------------------
# Finding and loading space files


def builtin_space_dirs() -> list[Path]:
    """`search/` beside the package (editable install) and where a wheel installs it."""
    return [Path(__file__).resolve().parent.parent / "search",
            Path(sysconfig.get_path("data")) / "share" / "unet-opt" / "search",
            Path(sys.prefix) / "share" / "unet-opt" / "search"]


def find_space(name: str) -> Path:
    """A path to a TOML file, or a built-in name (`default`, `drone`, `binary`)."""
    path = Path(name)
    if path.is_file():
        return path
    if path.suffix == "" and path.name == name:
        for folder in [Path.cwd() / "search", *builtin_space_dirs()]:
            if (folder / f"{name}.toml").is_file():
                return folder / f"{name}.toml"
    if path.exists():
        raise UserError(f"space file '{name}' is not a file; pass a TOML file such as search/default.toml")
    raise UserError(f"space file '{name}' not found; pass a path to a TOML file or one of: default, drone, binary")


def load_config(space: str = "default", overrides: dict[str, Any] | None = None,
                sets: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- space file <- command-line `overrides` ({"search.trials": 30}) and `--set` strings."""
    path = find_space(space)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({e}); pass a readable UTF-8 TOML file") from None
    return config_from_text(text, str(path), overrides, sets)


def config_from_text(text: str, where: str, overrides: dict[str, Any] | None = None,
                     sets: list[str] | tuple[str, ...] = ()) -> Config:
    """The same rules for TOML text from anywhere: a space file, a checkpoint, an MLflow artifact."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: not valid TOML ({e}); fix the file's syntax") from None

    unknown = sorted(set(raw) - {*SECTIONS, "space"})
    if unknown:
        raise UserError(f"{where}: unknown section [{unknown[0]}]; expected one of "
                        f"[data], [model], [train], [search], [space.NAME]")
    values: dict[str, Any] = {}
    for section in SECTIONS:
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise UserError(f"{where}: '{section}' must be a table ([{section}])")
        for key, value in table.items():
            values[f"{section}.{key}"] = check_field(f"{section}.{key}", value, where)
    space_table = raw.get("space", {})
    if not isinstance(space_table, dict):
        raise UserError(f"{where}: 'space' must hold tables like [space.lr]")
    space = {}
    for name, spec in space_table.items():
        param = parse_param(name, spec, where)
        space[param.name] = param

    for dotted, value in (overrides or {}).items():
        values[dotted] = check_field(dotted, value, "the command line")
        space.pop(dotted, None)
    for item in sets:
        dotted, value = parse_set(item)
        if dotted.startswith("space."):
            space = set_space_key(space, dotted, value)
            continue
        values[dotted] = check_field(dotted, value, f"--set {item}")
        space.pop(dotted, None)

    cfg = Config(space=space, source=where).replace(values)
    validate(cfg, where)
    return cfg


def parse_set(item: str) -> tuple[str, Any]:
    """`section.key=value`; the value is read as TOML (`3`, `1e-3`, `true`, `["car"]`), else a string."""
    dotted, sep, text = item.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted:
        raise UserError(f"--set '{item}' is not of the form section.key=value, e.g. --set train.patience=3")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return dotted, value


def resolve_name(name: str, where: str) -> str:
    """`lr` -> `train.lr`; `model.depth` stays; anything else is an error naming the known fields."""
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    section, _, key = name.partition(".")
    if section in SECTIONS and key in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        return name
    raise UserError(f"{where}: unknown key '{name}'; expected one of {', '.join(known_keys())}")


def known_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def check_field(dotted: str, value: Any, where: str) -> Any:
    """Check `value` against the field's declared type and choices; return it converted."""
    dotted = resolve_name(dotted, where)
    section, key = dotted.split(".")
    cls = SECTIONS[section]
    expected = get_type_hints(cls)[key]
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[key]
    ok = (
        (expected is bool and isinstance(value, bool))
        or (expected is int and isinstance(value, int) and not isinstance(value, bool))
        or (expected is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (expected is str and isinstance(value, str))
        or (expected == list[str] and isinstance(value, list) and all(isinstance(v, str) for v in value))
    )
    if not ok:
        name = getattr(expected, "__name__", str(expected))
        raise UserError(f"{where}: {dotted} = {value!r} should be {name}; e.g. {dotted} = "
                        f"{toml_value(getattr(cls(), key))}")
    if expected is float:
        value = float(value)
    if expected == list[str]:
        value = list(value)
    choices = meta.get("choices")
    if choices and value not in choices:
        raise UserError(f"{where}: {dotted} = {value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def parse_param(name: str, spec: Any, where: str) -> Param:
    dotted = resolve_name(name, f"{where} [space.{name}]")
    label = f"{where} [space.{name}]"
    if not isinstance(spec, dict):
        raise UserError(f"{label}: must be a table with type = \"float\" | \"int\" | \"categorical\"")
    allowed = {"type", "low", "high", "step", "log", "choices"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise UserError(f"{label}: unknown key '{extra[0]}'; expected {', '.join(sorted(allowed))}")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise UserError(f"{label}: type = {kind!r}; expected \"float\", \"int\" or \"categorical\"")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{label}: categorical needs a non-empty list, e.g. choices = [32, 64]")
        for c in choices:
            check_field(dotted, c, label)
        return Param(dotted, kind, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    number = (int,) if kind == "int" else (int, float)
    for key, v in (("low", low), ("high", high)):
        if not isinstance(v, number) or isinstance(v, bool):
            raise UserError(f"{label}: {key} must be {'an integer' if kind == 'int' else 'a number'}, got {v!r}")
    if low > high:
        raise UserError(f"{label}: low = {low} is above high = {high}; swap them")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise UserError(f"{label}: log must be true or false")
    if log and low <= 0:
        raise UserError(f"{label}: log = true needs low > 0, got {low}")
    if step is not None and (not isinstance(step, number) or isinstance(step, bool) or step <= 0):
        raise UserError(f"{label}: step must be a positive {'integer' if kind == 'int' else 'number'}")
    if log and step is not None:
        raise UserError(f"{label}: log and step cannot be combined; drop one")
    check_field(dotted, low, label)
    return Param(dotted, kind, low=low, high=high, step=step, log=log)


def set_space_key(space: dict[str, Param], dotted: str, value: Any) -> dict[str, Param]:
    """`--set space.lr.high=0.05` edits one key of a searched parameter."""
    parts = dotted.split(".")
    where = f"--set {dotted}={value}"
    if len(parts) < 3:
        raise UserError(f"{where}: expected space.NAME.KEY=value, e.g. --set space.lr.high=0.05")
    name, key = ".".join(parts[1:-1]), parts[-1]
    target = resolve_name(name, where)
    if target not in space:
        raise UserError(f"{where}: '{name}' is not searched in this space; searched: {', '.join(space) or 'nothing'}")
    spec = {k: v for k, v in dataclasses.asdict(space[target]).items() if k != "name" and v not in (None, ())}
    if "choices" in spec:
        spec["choices"] = list(spec["choices"])
    spec[key] = value
    return {**space, target: parse_param(target, spec, where)}


def validate(cfg: Config, where: str) -> None:
    """Rules that involve values, several fields or the space."""
    d = cfg.data

    def fail(message: str) -> None:
        raise UserError(f"{where}: {message}")

    def values_of(dotted: str) -> list:
        p = cfg.space.get(dotted)
        if p is None:
            return [cfg.get(dotted)]
        return p.values() or [p.low, p.high]

    for dotted, low in [("data.num_classes", 2), ("data.synthetic_images", 12), ("model.base_channels", 1),
                        ("model.depth", 1), ("train.epochs", 1), ("train.patience", 1), ("search.trials", 1),
                        ("data.image_size", 8), ("train.batch_size", 4), ("search.startup_trials", 0),
                        ("search.brackets", 1)]:
        bad = [v for v in values_of(dotted) if v < low]
        if bad:
            fail(f"{dotted} = {bad[0]} is too small; use at least {low}")
    if max(values_of("model.depth")) > 6:
        fail("model.depth above 6 is not supported; use 1 to 6")
    for dotted in ("train.lr", "train.weight_decay", "search.timeout"):
        bad = [v for v in values_of(dotted) if v < 0 or (dotted == "train.lr" and v == 0)]
        if bad:
            fail(f"{dotted} = {bad[0]} must be {'positive' if dotted == 'train.lr' else 'zero or more'}")
    for dotted in ("data.val_fraction", "data.test_fraction"):
        v = cfg.get(dotted)
        if not 0 < v < 0.5:
            fail(f"{dotted} = {v} must be between 0 and 0.5, e.g. 0.15")

    for dotted, multiple, example in (("train.batch_size", 4, 8),
                                      ("data.image_size", 2 ** max(values_of("model.depth")), 64)):
        p = cfg.space.get(dotted)
        searched_int = p is not None and p.type == "int"
        bad = [v for v in values_of(dotted) if v % multiple]
        if searched_int and (p.step or 1) % multiple:
            bad.insert(0, f"step = {p.step or 1}")
        if bad:
            rule = "multiples of 4" if dotted == "train.batch_size" else f"multiples of 2**depth = {multiple}"
            near = bad[0] if isinstance(bad[0], int) else example
            fix = (f"low, high and step that are multiples of {multiple}, e.g. low = {multiple}, "
                   f"high = {4 * multiple}, step = {multiple}") if searched_int else \
                f"a multiple of {multiple}, e.g. {max(multiple, round(near / multiple) * multiple)}"
            fail(f"{dotted} values must be {rule} (got {bad[0]}); use {fix}")
    if cfg.search.study and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", cfg.search.study):
        fail(f"study name {cfg.search.study!r} may hold only letters, digits, '.', '_' and '-'; e.g. drone-256")
    if d.binary and d.foreground:
        fail("data.binary = \"mean\" and data.foreground both pick a foreground; set only one")
    if d.ignore_index >= d.num_classes:
        fail(f"data.ignore_index = {d.ignore_index} is not a class below num_classes = {d.num_classes}; "
             f"use -1 for none")


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
