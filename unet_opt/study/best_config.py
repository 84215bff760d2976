"""The best trial's configuration: what `retrain --best` trains, and the file `report --best-config` writes,
which `unet-opt train --space FILE` trains again exactly as the trial trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from unet_opt.config.paths import redact_url
from unet_opt.config.schema import Config, to_toml
from unet_opt.config.space_file import stored_config
from unet_opt.errors import UserError
from unet_opt.study.storage import load_existing


def best_trial_config(study: optuna.Study, setup: dict[str, Any]) -> tuple[Config, optuna.trial.FrozenTrial]:
    """The best trial's config, exactly as the trial trained it: the study's stored config with the
    trial's sampled params and its own seed."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise UserError(f"study '{study.study_name}' has no complete trial yet; run `unet-opt search` until one "
                        f"completes (pruned and failed trials are not retrained)")
    if "config_toml" not in setup:
        raise UserError(f"study '{study.study_name}' holds no stored config (made by an older unet-opt); "
                        f"run a new search with --study NEW_NAME")
    best = study.best_trial
    base = stored_config(setup["config_toml"], f"study '{study.study_name}' (stored config)")
    return base.for_trial(best.params, best.number), best


def data_folders_from_here(stored: str, home: Path) -> list[str]:
    """Where the study's data folder may be from here: as stored, and from the project folder (a relative path
    is from where its search ran, which was the project folder unless --home was given); those that exist."""
    path = Path(stored).expanduser()
    found = [stored] if path.exists() else []
    if not path.is_absolute() and (home / path).exists() and (home / path).resolve() != path.resolve():
        found.append(str(home / path))
    if not found:
        raise UserError(f"the study's data folder {stored} does not exist from here ({Path.cwd()}); pass where it "
                        f"is now with --data PATH")
    return found


def check_config_path(path: Path, overwrite: bool) -> None:
    """A file the config can be written to, before anything is read or written (a folder is click's to
    refuse: `--best-config` is a `click.Path(dir_okay=False)`)."""
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it, or another file name")
    if path.exists() and not path.is_file():  # a pipe, a device: reading its first bytes below would wait for ever
        raise UserError(f"{path} is not a regular file, which --overwrite never replaces; write the config to a "
                        f"file, e.g. --best-config {other_name(path)}")
    if is_database(path):  # a slip of the tab key must not turn a study or the MLflow store into a TOML file
        raise UserError(f"{path} is a database (a study storage or an MLflow store?), which --overwrite never "
                        f"replaces; write the config to another file, e.g. --best-config {other_name(path)}")
    if overwrite and is_binary(path):  # a checkpoint, a picture: what --overwrite replaces is a config written before
        raise UserError(f"{path} is not a text file (a checkpoint? a picture?), which --overwrite never replaces; "
                        f"write the config to another file, e.g. --best-config {other_name(path)}")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"{path.parent} is a file, not a folder; write the config elsewhere")
    if not path.parent.is_dir():
        raise UserError(f"folder {path.parent} does not exist; create it first or write the file elsewhere")


def other_name(path: Path) -> str:
    """A name to suggest beside `path`: best.toml, unless that is `path` itself."""
    return "best-config.toml" if path.name == "best.toml" else "best.toml"


def is_binary(path: Path) -> bool:
    """Whether `path` is a file whose start holds a NUL byte, which no text (and no TOML) file does."""
    try:
        with path.open("rb") as file:
            return b"\0" in file.read(8192)
    except OSError:  # missing, a folder, unreadable
        return False


def is_database(path: Path) -> bool:
    """Whether `path` is an SQLite database file (by its header, whatever its name)."""
    try:
        with path.open("rb") as file:
            return file.read(16) == b"SQLite format 3\x00"
    except OSError:  # missing, a folder, unreadable: not a database to keep safe
        return False


def best_config_text(storage_url: str, study_name: str | None, shown_path: str, home: Path) -> tuple[str, dict]:
    """The best trial's config as TOML, headed by how to train it again; and what it holds, to say. Its data
    folder is written as an absolute path, found as `retrain` finds it (`home`: the project folder): the
    study keeps the path as its search was given it, relative to where that ran, not to the file."""
    study, setup, _ = load_existing(storage_url, study_name)
    cfg, best = best_trial_config(study, setup)
    metric = cfg.search.goal.metric
    again = f"unet-opt train --space {shown_path}"
    if cfg.data.dataset != "synthetic":
        try:
            cfg = cfg.replace({"data.dataset": str(Path(data_folders_from_here(cfg.data.dataset, home)[0]).resolve())})
        except UserError:  # moved since: the file still says where it was, and how to train on where it is
            again += " --data PATH   (its data folder is no longer there: PATH is where it is now)"
    header = (f"# best trial #{best.number} of study '{study.study_name}': {metric} = {best.value:.4f}\n"
              f"# params: {', '.join(f'{k}={v}' for k, v in best.params.items())}\n"
              f"# train it again: {again}   (its [space] is ignored by train)\n")
    return header + to_toml(cfg, redact_url), {"study": study.study_name, "number": best.number, "metric": metric,
                                               "value": best.value}


def write_best_config(storage_url: str, study_name: str | None, path: Path, home: Path,
                      overwrite: bool = False) -> dict:
    """The best trial's config as a TOML file; what was written, for the command to say."""
    check_config_path(path, overwrite)
    text, best = best_config_text(storage_url, study_name, str(path), home)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}); write the config elsewhere") from None
    return best
