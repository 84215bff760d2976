"""The rules a resolved config must keep (ranges, multiples, names, combinations), each a function of the
config that returns the problem as text, and `validate`, which raises the first as one UserError."""

import re
from collections.abc import Callable

from unet_opt.config.schema import Config
from unet_opt.errors import UserError

SEED_LIMIT = 2**32 - 1  # NumPy's and Optuna's seeds are 32-bit


def at_least(dotted: str, low: int) -> Callable[[Config], str | None]:
    def rule(cfg: Config) -> str | None:
        bad = [v for v in cfg.values_of(dotted) if v < low]
        return f"{dotted} = {bad[0]} is too small; use at least {low}" if bad else None
    return rule


def non_negative(dotted: str, positive: bool = False) -> Callable[[Config], str | None]:
    def rule(cfg: Config) -> str | None:
        bad = [v for v in cfg.values_of(dotted) if v < 0 or (positive and v == 0)]
        return f"{dotted} = {bad[0]} must be {'positive' if positive else 'zero or more'}" if bad else None
    return rule


def fraction(dotted: str) -> Callable[[Config], str | None]:
    def rule(cfg: Config) -> str | None:
        v = cfg.get(dotted)
        return None if 0 < v < 0.5 else f"{dotted} = {v} must be between 0 and 0.5, e.g. 0.15"
    return rule


def multiple_of(dotted: str, multiple_for: Callable[[Config], int], rule_text: Callable[[int], str],
                example: int) -> Callable[[Config], str | None]:
    """Every value (and a searched int's step) a multiple; the fix names the nearest legal value."""
    def rule(cfg: Config) -> str | None:
        multiple = multiple_for(cfg)
        p = cfg.space.get(dotted)
        searched_int = p is not None and p.type == "int"
        bad: list = [v for v in cfg.values_of(dotted) if v % multiple]
        if searched_int and p.high % multiple:  # Optuna would quietly lower it to the last step below it
            bad.insert(0, f"high = {p.high}")
        if searched_int and (p.step or 1) % multiple:
            bad.insert(0, f"step = {p.step or 1}")
        if not bad:
            return None
        near = bad[0] if isinstance(bad[0], int) else example
        fix = (f"low, high and step that are multiples of {multiple}, e.g. low = {multiple}, "
               f"high = {4 * multiple}, step = {multiple}") if searched_int else \
            f"a multiple of {multiple}, e.g. {max(multiple, round(near / multiple) * multiple)}"
        return f"{dotted} values must be {rule_text(multiple)} (got {bad[0]}); use {fix}"
    return rule


def at_most(dotted: str, high: int) -> Callable[[Config], str | None]:
    def rule(cfg: Config) -> str | None:
        bad = [v for v in cfg.values_of(dotted) if v > high]
        return f"{dotted} = {bad[0]} is too large; use at most {high}" if bad else None
    return rule


def name_problem(name: str, what: str) -> str | None:
    """Study and model names become file and experiment names: no path separators, no '..'."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name) or ".." in name:
        return (f"{what} {name!r} may hold only letters, digits, '.', '_' and '-' (ASCII), must start with a letter "
                f"or digit, hold no '..' and be at most 100 characters long; e.g. drone-256")
    return None


def check_name(name: str, flag: str) -> None:
    problem = name_problem(name, flag)
    if problem:
        raise UserError(problem)


def study_name_is_safe(cfg: Config) -> str | None:
    return name_problem(cfg.search.study, "study name") if cfg.search.study else None


def one_foreground_rule(cfg: Config) -> str | None:
    both = cfg.data.binary and cfg.data.foreground
    return "data.binary = \"mean\" and data.foreground both pick a foreground; set only one" if both else None


def ignore_index_is_a_class(cfg: Config) -> str | None:
    d = cfg.data
    return None if d.ignore_index < d.num_classes else \
        f"data.ignore_index = {d.ignore_index} is not a class below num_classes = {d.num_classes}; use -1 for none"


RULES: list[Callable[[Config], str | None]] = [
    *(at_least(dotted, low) for dotted, low in [
        ("data.num_classes", 2), ("data.synthetic_images", 12), ("model.base_channels", 1), ("model.depth", 1),
        ("train.epochs", 1), ("train.patience", 1), ("search.trials", 1), ("data.image_size", 8),
        ("train.batch_size", 4), ("search.startup_trials", 0), ("search.brackets", 1), ("train.warmup_epochs", 0)]),
    *(at_most(dotted, high) for dotted, high in [
        ("model.depth", 6), ("data.image_size", 4096), ("data.eval_size", 4096), ("data.synthetic_images", 100_000),
        ("data.num_classes", 255), ("model.base_channels", 1024), ("train.epochs", 10_000), ("train.batch_size", 4096),
        ("search.trials", 100_000), ("search.startup_trials", 100_000), ("search.brackets", 8), ("train.momentum", 0.99),
        ("train.seed", SEED_LIMIT - 100_000), ("search.seed", SEED_LIMIT), ("data.split_seed", SEED_LIMIT)]),
    *(non_negative(dotted) for dotted in ("train.seed", "search.seed", "data.split_seed")),
    non_negative("train.lr", positive=True),
    *(non_negative(dotted) for dotted in ("train.weight_decay", "train.momentum", "train.grad_clip")),
    non_negative("search.timeout"),
    fraction("data.val_fraction"),
    fraction("data.test_fraction"),
    multiple_of("train.batch_size", lambda cfg: 4, lambda m: "multiples of 4", 8),
    multiple_of("data.image_size", lambda cfg: 2 ** max(cfg.values_of("model.depth")),
                lambda m: f"multiples of 2**depth = {m}", 64),
    lambda cfg: None if cfg.data.eval_size in (-1, 0) or cfg.data.eval_size >= 8 else
    f"data.eval_size = {cfg.data.eval_size} must be a height of 8 or more, 0 (the largest image_size) or -1 "
    f"(each trial's own frame)",
    study_name_is_safe,
    one_foreground_rule,
    ignore_index_is_a_class,
    lambda cfg: "model.pretrained needs a model.encoder, e.g. resnet18" if cfg.model.pretrained and set(
        cfg.values_of("model.encoder")) == {"none"} else None,
    lambda cfg: "train.warmup_epochs must be fewer than train.epochs" if 0 < max(cfg.values_of(
        "train.warmup_epochs")) >= min(cfg.values_of("train.epochs")) else None,
]


def validate(cfg: Config, where: str) -> None:
    """The first broken rule, as one UserError naming `where`."""
    for rule in RULES:
        problem = rule(cfg)
        if problem:
            raise UserError(f"{where}: {problem}")
