"""`unet-opt`: the command group, its global options, and `main`, which turns every user mistake into one
line. The commands themselves are in `study_commands`, `model_commands` and `data_commands`: each parses,
builds the config, calls one library function and prints.

Every user mistake ends as one line `error: ...` on stderr with exit code 2; Ctrl-C exits 130.
Heavy modules (torch, Optuna, MLflow) are imported inside the commands that need them.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import signal
import sys
import threading

import click

from unet_opt import __version__, runtime
from unet_opt.cli.data_commands import data
from unet_opt.cli.model_commands import evaluate, predict, retrain, train
from unet_opt.cli.options import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    HOME_GIVEN,
    Session,
    open_home,
    option,
)
from unet_opt.cli.study_commands import figures, report, search, studies, ui
from unet_opt.config.paths import redact_url
from unet_opt.errors import Terminated, UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="unet-opt")
@option("--home", type=click.Path(file_okay=False), envvar="UNET_OPT_HOME", show_envvar=True,
        show_default="the current directory", help="Folder holding studies/ and mlruns/.")
@option("-v", "--verbose", is_flag=True, help="Also show debug messages and tracebacks.")
@option("-q", "--quiet", is_flag=True, envvar="UNET_OPT_QUIET", show_envvar=True,
        help="Only warnings and errors, no progress bars; results are still printed (-v wins over -q).")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: bool, quiet: bool) -> None:
    """Tune and track UNet segmentation models with Optuna and MLflow.

    \b
    Quick start:
      unet-opt search --trials 30     # a study on the embedded data
      unet-opt ui                     # compare its trials (MLflow) and watch it live
      unet-opt retrain --best         # retrain the winner, test it, register it
    """
    runtime.setup(verbose, quiet=quiet)
    typed = ctx.get_parameter_source("home") == click.core.ParameterSource.COMMANDLINE
    ctx.meta[HOME_GIVEN] = home if typed else None
    try:
        paths = open_home(ctx, home, "--home" if typed else "UNET_OPT_HOME")
    except UserError as e:
        if typed:
            raise
        paths = e  # raised when the command asks for its folder, unless a --home after its name gives one
    ctx.obj = Session(paths, verbose)


for command in (search, report, studies, figures, ui, train, retrain, evaluate, predict, data):
    cli.add_command(command)


ELSEWHERE = "work in a folder you can write to (--home FOLDER)"
REFUSED_BY_THE_SYSTEM = {  # errors of the machine that a user fixes, and how
    errno.EACCES: f"fix its permissions, or {ELSEWHERE}",
    errno.EPERM: f"fix its permissions, or {ELSEWHERE}",
    errno.EROFS: ELSEWHERE,
    errno.ENOSPC: "free some space on that disk, or work on another (--home FOLDER)",
}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turns every user mistake into one `error:` line and exit code 2."""
    runtime.handle_stop_signals()
    try:
        code = cli.main(args=argv, prog_name="unet-opt", standalone_mode=False)
    except click.exceptions.Exit as e:  # --help
        code = e.exit_code
    except click.exceptions.NoArgsIsHelpError as e:  # `unet-opt` alone: the help, not an error
        click.echo(e.ctx.get_help())
        code = 0
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "unet-opt"
        click.echo(f"error: {redact_url(e.format_message())} (see '{where} --help')", err=True)
        code = EXIT_USAGE
    except click.ClickException as e:
        click.echo(f"error: {redact_url(e.format_message())}", err=True)
        code = EXIT_USAGE
    except UserError as e:
        click.echo(f"error: {redact_url(' '.join(str(e).split()))}", err=True)
        code = EXIT_USAGE
    except (KeyboardInterrupt, click.exceptions.Abort) as e:  # click turns an interrupt into Abort
        code = stopped(isinstance(e, Terminated) or isinstance(e.__cause__, Terminated))
    except Exception as e:
        if runtime.stop_signal is not None:  # the signal landed inside an import or a library that turned it into
            logging.getLogger("unet_opt").debug("after the stop signal", exc_info=True)  # another error
            code = stopped(runtime.stop_signal == signal.SIGTERM)
        elif isinstance(e, OSError) and e.errno in REFUSED_BY_THE_SYSTEM:  # the machine's no, not a bug: one line
            where = f" ({e.filename})" if e.filename else ""
            click.echo(f"error: {e.strerror}{where}; {REFUSED_BY_THE_SYSTEM[e.errno]}", err=True)
            code = EXIT_USAGE
        else:
            raise
    if not code and runtime.stop_signal is not None:  # a stop that no safe point raised again: still said
        code = stopped(runtime.stop_signal == signal.SIGTERM)
    sys.exit(code or 0)


def entry() -> None:
    """The `unet-opt` command: `main`, then an exit that skips the interpreter's teardown of its modules
    (torch, torch._dynamo and MLflow take 1-2 s to tear down, for nothing). What a normal exit does that
    matters still happens: other threads are waited for, every exit handler runs (multiprocessing's,
    MLflow's, temporary folders', logging's) and the output is flushed."""
    try:
        main()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # sys.exit("message"): printed, exit code 1, as Python does
            print(e.code, file=sys.stderr)
            code = 1
    # what the interpreter does at exit, in its order (no public names for either), before the teardown skipped
    try:  # threading's exit hooks first (idle thread-pool workers, such as MLflow's, end), then the join
        threading._shutdown()
    except KeyboardInterrupt as e:  # a stop while another thread is waited for ends the wait, without a traceback
        code = code or stopped(isinstance(e, Terminated))
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: the command was started with that descriptor closed (`1>&-`)
            with contextlib.suppress(OSError, ValueError):  # a closed pipe, a closed stream
                stream.flush()
    os._exit(code)


def stopped(terminated: bool) -> int:
    click.echo("terminated" if terminated else "interrupted", err=True)
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
