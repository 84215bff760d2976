"""Click options that several commands share, declared once, with their defaults shown one way.

Options whose default comes from the space file's config are `None` in click (so that a space file can
set them) and name that default in `show_default`; `Option` prints it as click prints any default:
`[default: 30]`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import click

from unet_opt import runtime
from unet_opt.config.paths import Paths
from unet_opt.errors import UserError

EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143  # a user's mistake, Ctrl-C, SIGTERM


class Option(click.Option):
    """A click option whose `show_default` string is shown as a value, `[default: 30]`, like any other
    default, rather than in click's parentheses for described defaults, `[default: (30)]`; that refuses an
    empty value (`--study ''` would otherwise mean the default, or a folder named ''); and whose whole
    numbers are called that (click's "'abc' is not a valid integer range" for one number)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(self.type, click.IntRange):
            self.type.name = "integer"

    def process_value(self, ctx: click.Context, value):
        value = super().process_value(ctx, value)  # a type's own word on an empty value first (--out)
        given = value if isinstance(value, tuple) else (value,)
        typed = ctx.get_parameter_source(self.name) == click.core.ParameterSource.COMMANDLINE  # not a default
        if typed and any(isinstance(v, str) and not v.strip() for v in given):
            raise click.BadParameter(f"is empty; pass a value, or leave {self.opts[0]} out", ctx, self)
        return value

    def get_help_extra(self, ctx: click.Context):
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str) and "default" in extra:
            extra["default"] = self.show_default
        return extra


class Seconds(click.FloatRange):
    """A finite number of seconds, 0 or more (0: none, as in a space file): click's FloatRange lets nan and inf
    through."""

    name = "number of seconds"

    def __init__(self):
        super().__init__(min=0)

    def convert(self, value, param, ctx):
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value} is not a number of seconds; e.g. {param.opts[0] if param else ''} 3600".strip(),
                      param, ctx)
        return seconds


class OutFolder(click.Path):
    """A folder to write into (`--out`): not a file, and not an empty name (which would be the current folder)."""

    def __init__(self):
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("needs a folder name, e.g. --out results", param, ctx)
        return super().convert(value, param, ctx)


OUT_FOLDER = OutFolder()


class ConfigFile(click.Path):
    """A file to write a config into (`--best-config`), or `-` for stdout; not an empty name."""

    def __init__(self):
        super().__init__(dir_okay=False)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("needs a file name, e.g. --best-config best.toml (or - for stdout)", param, ctx)
        return super().convert(value, param, ctx)


def option(*names: str, **settings):
    """`click.option` with `Option`: every option of the CLI is declared with this."""
    return click.option(*names, cls=Option, **settings)


@dataclass(frozen=True)
class Session:
    """What the group's options give every command: the project folder (or why UNET_OPT_HOME names none, raised
    when a command asks for `paths`, so that a --home after the command name can stand in for it) and -v."""

    home: Paths | UserError
    verbose: bool

    @property
    def paths(self) -> Paths:
        if isinstance(self.home, UserError):
            raise self.home
        return self.home


def be_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """`-v` after the command name (`unet-opt search -v`) does what it does before it."""
    if value and isinstance(ctx.obj, Session):
        ctx.obj = replace(ctx.obj, verbose=True)
        runtime.setup(verbose=True)


def be_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """`-q` after the command name does what it does before it."""
    if value and isinstance(ctx.obj, Session) and not ctx.obj.verbose:
        runtime.setup(quiet=True)


HOME_GIVEN = "unet_opt.home"  # ctx.meta (shared by every nested context): the --home typed so far


def open_home(ctx: click.Context, home: str | None, named: str = "--home") -> Paths:
    """The project folder: `home`, or the current directory. A new folder asked for by name is made, inside one
    that exists, and removed again if the command writes nothing in it (a refused command leaves nothing)."""
    if home and not Path(home).is_dir():
        if not Path(home).parent.is_dir():
            raise UserError(f"folder {Path(home).parent} does not exist; create it first or fix {named}")
        Path(home).mkdir()
        ctx.call_on_close(partial(remove_if_empty, Path(home)))
    return Paths.resolve(home)


def remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # something was written in it (or it is gone): it stays as it is
        folder.rmdir()


def home_after(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """`--home` after the command name (`unet-opt report --home ../a`) does what it does before it."""
    if value is None or not isinstance(ctx.obj, Session):
        return
    if not value.strip():  # this callback's None hides the value from `Option`'s own check
        raise click.BadParameter("is empty; pass a value, or leave --home out", ctx, param)
    before = ctx.meta.get(HOME_GIVEN)
    if before is not None and Path(before).resolve() != Path(value).resolve():
        raise UserError(f"--home is given twice, as {before} and as {value}; pass one")
    ctx.meta[HOME_GIVEN] = value
    ctx.obj = replace(ctx.obj, home=open_home(ctx, value))


def output_options(command):
    """-v, -q and --home, accepted after the command name as before it."""
    command = option("--home", type=click.Path(file_okay=False), expose_value=False, metavar="DIR",
                     show_default="the current directory", callback=home_after,
                     help="Folder holding studies/ and mlruns/ (also before the command; env var UNET_OPT_HOME).")(command)
    command = option("-q", "--quiet", is_flag=True, expose_value=False, callback=be_quiet,
                     help="Only warnings and errors, no progress bars.")(command)
    return option("-v", "--verbose", is_flag=True, expose_value=False, callback=be_verbose,
                  help="Also show debug messages and tracebacks.")(command)
storage_option = option("--storage", envvar="UNET_OPT_STORAGE", show_envvar=True,
                        show_default="studies/unet-opt.db in the project folder", help="Optuna storage URL.")
tracking_option = option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
                         show_default="mlruns/mlflow.db in the project folder", help="MLflow tracking URI.")
overwrite_option = option("--overwrite", is_flag=True, help="Replace output files that exist already.")
sets_option = option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override any field, e.g. --set train.patience=3 (repeatable).")
space_option = option("--space", default="default", show_default=True,
                      help="Search-space TOML file, or a built-in name: default, drone, drone-cpu, binary.")
data_option = option("--data", show_default="the space file's, else synthetic",
                     help="'synthetic' (embedded) or a data folder.")


def placement_options(command):
    """--device, --gpus and --procs: where one run trains (a trial, a retrain, a baseline)."""
    for declared in reversed([
        option("--device", type=click.Choice(["auto", "cpu", "cuda"]), show_default="auto",
               help="Where to train: auto takes a GPU when there is one."),
        option("--gpus", metavar="all|N", show_default="all", help="GPUs one run trains on, one DDP process each."),
        option("--procs", type=click.IntRange(min=1), show_default="1",
               help="With --device cpu: processes one run trains on (DDP over gloo)."),
    ]):
        command = declared(command)
    return command


def placement_of(device: str | None, gpus: str | None, procs: int | None):
    from unet_opt.parallel.placement import plan

    return plan(device or "auto", gpus, procs)
