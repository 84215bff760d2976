"""Space files (TOML), `--set` overrides and validation: text in, a checked `Config` out.

Precedence: command-line flags and `--set` > the space file > the dataclass defaults. A field that
`--set` fixes is taken out of the search space, so `--set train.epochs=3` really means 3 epochs.
Every mistake raises `UserError` naming the key, the file and what was expected.
"""

import dataclasses
import math
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any, get_type_hints

from unet_opt.config.rules import validate
from unet_opt.config.schema import (
    BEFORE_THE_FIELD_EXISTED,
    PARAM_TYPES,
    SECTIONS,
    SHORT_NAMES,
    Config,
    Param,
    toml_value,
)
from unet_opt.errors import UserError

# Fields that define the data, the split or where things run: trials that differed in them would not be
# comparable (or not possible), so they take one value per study.
NOT_SEARCHABLE = {"data.dataset", "data.num_classes", "data.eval_size", "data.ignore_index", "data.binary",
                  "data.foreground", "data.val_fraction", "data.test_fraction", "data.split_seed", "data.synthetic_images",
                  "train.device", "model.pretrained"}


def builtin_space_dirs() -> list[Path]:
    """`search/` beside the package (editable install) and where a wheel installs it."""
    return [Path(__file__).resolve().parents[2] / "search",
            Path(sysconfig.get_path("data")) / "share" / "unet-opt" / "search",
            Path(sys.prefix) / "share" / "unet-opt" / "search"]


def find_space(name: str) -> Path:
    """A path to a TOML file, or a built-in name (`default`, `drone`, `drone-cpu`, `binary`): a `search/NAME.toml` in
    the current folder first, then the installed ones."""
    path = Path(name)
    if path.is_file():
        return path
    if path.suffix == "" and path.name == name:
        for folder in [Path.cwd() / "search", *builtin_space_dirs()]:
            if (folder / f"{name}.toml").is_file():
                return folder / f"{name}.toml"
    if path.exists():
        raise UserError(f"space file '{name}' is not a file; pass a TOML file such as search/default.toml")
    if path.suffix == "" and path.with_suffix(".toml").is_file():  # `--space small` for ./small.toml
        raise UserError(f"space file '{name}' not found; to use {path.with_suffix('.toml')}, pass "
                        f"--space {path.with_suffix('.toml')}")
    raise UserError(f"space file '{name}' not found; pass a path to a TOML file or one of: default, drone, "
                    f"drone-cpu, binary")


def load_config(space: str = "default", overrides: dict[str, Any] | None = None,
                sets: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- space file <- command-line `overrides` ({"search.trials": 30}) and `--set` strings."""
    path = find_space(space)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({e}); pass a readable UTF-8 TOML file") from None
    if not text.strip():  # a failed copy or redirect, far likelier than a wish for every default
        raise UserError(f"{path} is empty; write the settings to change into it (see search/default.toml), "
                        f"or leave out --space to use the defaults")
    return config_from_text(text, str(path), overrides, sets)


def check_data_folder_named(cfg: Config) -> None:
    """Without --data, the folder that data.dataset names (the drone spaces name Kaggle's) must be there: said with
    the flag that gives another, rather than as a data folder the user never typed."""
    dataset = cfg.data.dataset
    if dataset != "synthetic" and not Path(dataset).expanduser().exists():
        raise UserError(f"the data folder {dataset} (data.dataset in {cfg.source}) does not exist from here "
                        f"({Path.cwd()}); pass the data with --data PATH, or --data synthetic for the embedded data")


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
    space, named = {}, {}
    for name, spec in space_table.items():
        param = parse_param(name, spec, where)
        if param.name in space:  # `lr` and `train.lr`: one of the two ranges would be dropped without a word
            first, second = (f'"{n}"' if "." in n else n for n in (named[param.name], name))
            raise UserError(f"{where}: [space.{first}] and [space.{second}] both search {param.name}; keep one")
        space[param.name], named[param.name] = param, name

    for dotted, value in (overrides or {}).items():
        values[dotted] = check_field(dotted, value, "the command line")
        space.pop(dotted, None)
    for item in sets:
        dotted, value = parse_set(item)
        if dotted.startswith("space."):
            space = set_space_key(space, dotted, value)
            continue
        value = check_field(dotted, value, f"--set {item}")
        dotted = resolve_name(dotted, f"--set {item}")
        if dotted in (overrides or {}) and overrides[dotted] != value:  # which of the two was meant?
            raise UserError(f"--set {item} and a flag of the command line set {dotted} to two values "
                            f"({overrides[dotted]!r} and {value!r}); pass one of them")
        values[dotted] = value
        space.pop(dotted, None)

    cfg = Config(space=space, source=where).replace(values)
    validate(cfg, f"{where} with the command line's values" if overrides or sets else where)
    return cfg


def stored_config(text: str, where: str) -> Config:
    """A resolved config that a study or a checkpoint stored, of any version: the fields its version did not
    have yet take what that version did (`BEFORE_THE_FIELD_EXISTED`), not today's defaults."""
    cfg = config_from_text(text, where)
    raw = tomllib.loads(text)
    return cfg.replace({dotted: value for dotted, value in BEFORE_THE_FIELD_EXISTED.items()
                        if dotted.split(".")[1] not in raw.get(dotted.split(".")[0], {})})


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
        if not math.isfinite(value):
            raise UserError(f"{where}: {dotted} = {value} must be a finite number; e.g. {dotted} = "
                            f"{toml_value(getattr(cls(), key))}")
    if expected == list[str]:
        value = list(value)
    choices = meta.get("choices")
    if choices and value not in choices:
        raise UserError(f"{where}: {dotted} = {value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def parse_param(name: str, spec: Any, where: str) -> Param:
    dotted = resolve_name(name, f"{where} [space.{name}]")
    label = f"{where} [space.{name}]"
    if dotted in NOT_SEARCHABLE or dotted.startswith("search."):
        raise UserError(f"{label}: {dotted} cannot be searched (it defines the data, the split or the search "
                        f"itself); set it with a fixed value, e.g. --set {dotted}=...")
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
    if step is not None and step > high - low and high > low:
        raise UserError(f"{label}: step = {step} is wider than the range {low}..{high}; use a smaller step")
    field_type = get_type_hints(SECTIONS[dotted.split(".")[0]])[dotted.split(".")[1]]
    if kind == "float" and field_type is int:
        raise UserError(f"{label}: {dotted} is a whole number; use type = \"int\" (or \"categorical\")")
    if field_type not in (int, float):
        raise UserError(f"{label}: {dotted} is not a number; use type = \"categorical\" with choices")
    check_field(dotted, low, label)
    check_field(dotted, high, label)
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


# ---------------------------------------------------------------------------------------------
# Validation: rules that involve values, several fields or the space. Each rule returns the problem
# (and its fix) or None; `validate` reports the first problem as "<where>: <problem>".
