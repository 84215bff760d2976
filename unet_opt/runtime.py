"""One runtime setup, called by the CLI entry, each `--workers` process and each rank process.

Nothing in the package changes the environment, logging or warnings when it is imported: this does it,
before MLflow, Optuna or matplotlib are imported, so their settings come from the environment.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import importlib.machinery
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator

from unet_opt.config.paths import redact_url
from unet_opt.errors import Terminated

ENVIRONMENT = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no progress bars mixed into our output
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # database creation is chatty at INFO (mlflow and alembic)
    # a tracking server that is down should be reported in seconds, not after minutes of back-off
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "View run ... at: http://user:password@..." lines
}
FORCED = {"MPLBACKEND": "Agg"}  # figures are files, even where a notebook terminal set an inline backend

stop_signal: int | None = None  # the SIGINT or SIGTERM that is stopping this process
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def redact_passwords(record: logging.LogRecord) -> bool:
    """A log filter: the message (its arguments filled in) and any traceback, with every URL's password
    replaced by ***."""
    record.msg, record.args = redact_url(record.getMessage()), None
    if record.exc_info:
        record.exc_text = redact_url(logging.Formatter().formatException(record.exc_info))
    return True


QUIET = "UNET_OPT_QUIET"  # "1": only warnings and errors, in this process and the processes it starts


def setup(verbose: bool = False, prefix: str = "", quiet: bool = False) -> None:
    """Environment defaults, the `unet_opt` log handler (messages on stderr, `prefix` before each) and
    warnings filters. Idempotent: a second call replaces the handler rather than adding one. `quiet`:
    warnings and errors only, and no progress bars; it is kept in the environment (UNET_OPT_QUIET, what
    `-q` sets), so that the worker processes a command starts are quiet too."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    os.environ.update(FORCED)
    if quiet:
        os.environ[QUIET] = "1"
    quiet = os.environ.get(QUIET) == "1" and not verbose
    from unet_opt.progress import BarSafeHandler

    handler = BarSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    handler.addFilter(redact_passwords)
    root = logging.getLogger("unet_opt")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    # heartbeats are used with ask/tell (our own Heartbeat thread), which Optuna warns about every trial
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    warnings.filterwarnings("ignore", message=".*experimental")  # Optuna's ExperimentalWarning (heartbeats)


def setup_torch(threads: int = 0) -> None:
    """The process-wide torch settings of a process that trains: its CPU threads (0: torch's default) and
    cuDNN autotuning (a run's input sizes are fixed, so cuDNN picks the fastest kernels once). Called once
    by each process that trains (a search's worker, a retrain, a rank), not at import: torch is not
    imported by commands that do not train."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True


def quiet_optuna() -> None:
    """Optuna's own log lines at warnings only: trial ends are our lines' to say. Called where a process
    first opens a study storage, since importing Optuna sets its level to INFO (so `setup`, which runs
    before any import of it, cannot)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextlib.contextmanager
def optuna_errors_only() -> Iterator[None]:
    """Optuna's warnings silenced for a block (its plots warn "no complete trials", which the page says)."""
    logger = logging.getLogger("optuna")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def on_stop_signal(signum: int, frame: object) -> None:
    global stop_signal
    stop_signal = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def stop_handler_replaced(stand_in) -> Iterator[dict]:
    """This process's stop handlers (where they are ours) replaced by `stand_in` while the block runs; yields
    the ones replaced, by signal."""
    before = {sig: signal.signal(sig, stand_in) for sig in STOP_SIGNALS
              if signal.getsignal(sig) in (on_stop_signal, on_first_stop_signal)}
    try:
        yield before
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stops_deferred(doing: str) -> Iterator[None]:
    """Ctrl-C and SIGTERM held back while the block runs: bookkeeping that a stop must not cut in half (a
    search's end: its last files, its parent run's end). The first stop is remembered in `stop_signal`
    and said, and the command still ends as stopped once the block is done; a second one (or one after
    an earlier stop) stops at once."""
    log = logging.getLogger("unet_opt")

    def hold(signum: int, frame: object) -> None:
        global stop_signal
        if stop_signal is not None:
            on_stop_signal(signum, frame)
        stop_signal = signum
        log.info("%s; press Ctrl-C again to stop now", doing)

    with stop_handler_replaced(hold):
        yield


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back for a short block that a stop must not cut (Optuna creating a trial,
    which returns it only once it exists): a stop that arrives is acted on as the block ends, as this
    process's handler would have."""
    held: list[int] = []
    try:
        with stop_handler_replaced(lambda signum, frame: held.append(signum)) as before:
            yield
    finally:
        if held:
            before[held[0]](held[0], None)


def release_what_a_stop_cut(stop: BaseException) -> None:
    """Let go of what a stop raised inside a library call left open, before anything more is recorded. A
    database transaction it cut stays open as long as its frames live, and the stop's traceback keeps them
    alive: SQLite's lock of even a read then blocks every later write of this process, for the store's
    60-s timeout. The stopped frames' variables are cleared and what they held is collected: once per stop,
    though each handler it is raised on through calls this (what it cut lies in its deepest frames)."""
    if getattr(stop, "released", False):
        return
    traceback.clear_frames(stop.__traceback__)
    gc.collect()
    stop.released = True


def hide_dropped_stop(unraisable: object) -> None:
    """`sys.unraisablehook`. A stop raised while a `__del__` or a weakref callback runs (a garbage-collected
    database connection, a temporary file) cannot leave it: Python prints "Exception ignored in ..." with a
    traceback and carries on. `raise_pending_stop` raises it again at the next safe point: no traceback."""
    if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and stop_signal is not None):  # Terminated too
        sys.__unraisablehook__(unraisable)


def raise_pending_stop() -> None:
    """Raise the stop this process received, where stopping is safe: between trials, at each epoch's end,
    while waiting for workers. A stop raised as it arrived never gets here (nothing resumes after one);
    one that Python dropped in a finalizer, or that a library turned into an error that was handled (a
    trial recorded FAIL), does. One that no safe point raised still ends the command as stopped (`cli.main`)."""
    if stop_signal is not None:
        raise Terminated() if stop_signal == signal.SIGTERM else KeyboardInterrupt()


def on_first_stop_signal(signum: int, frame: object) -> None:
    """A `--workers` process's handler: it acts on its first stop only. A terminal's Ctrl-C reaches it and
    its launcher, which passes the stop on; a second stop must not cut the first one's bookkeeping in half
    (the launcher kills a worker that does not end in time, or at once on a second Ctrl-C)."""
    if stop_signal is None:
        on_stop_signal(signum, frame)


def handle_stop_signals(first_only: bool = False) -> None:
    """SIGTERM (Slurm, Kubernetes, systemd, `kill`) stops this process as Ctrl-C does: the trial in
    progress is recorded as interrupted and its run KILLED, instead of the process vanishing mid-write.
    Both are remembered in `stop_signal`: one that lands inside an import or a library's own handler can
    surface as some other error, which is then still reported as the stop it is. `first_only`: later
    stops are ignored (a worker's, see `on_first_stop_signal`)."""
    global stop_signal
    stop_signal = None
    sys.unraisablehook = hide_dropped_stop
    if not any(isinstance(finder, TorchImportHeld) for finder in sys.meta_path):
        sys.meta_path.insert(0, TorchImportHeld())
    handler = on_first_stop_signal if first_only else on_stop_signal
    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored (`cmd &`)
        signal.signal(signal.SIGINT, handler)


class TorchImportHeld(importlib.abc.MetaPathFinder):
    """torch's first import runs with stops held (`stops_held`), acted on as soon as it is done. Its C++
    start-up calls back into Python (`torch._C._autograd_init`), and a Ctrl-C raised in there cannot unwind
    through C++: the process aborted (SIGABRT, "terminate called after throwing ... KeyboardInterrupt")
    instead of ending as interrupted. Only in the main thread, where the stop handlers run."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name != "torch" or threading.current_thread() is not threading.main_thread():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = StopsHeldLoader(spec.loader)
        return spec


class StopsHeldLoader(importlib.abc.Loader):
    """A module's own loader, whose execution of the module runs with stops held."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> object:
        return self.loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        with stops_held():
            self.loader.exec_module(module)

    def __getattr__(self, name: str) -> object:  # the rest of the loader's interface (resources, source)
        return getattr(self.loader, name)
