"""A trial's files drawn and logged in a background process, while the next trial trains.

Drawing a trial's figures takes a few tenths of a second of matplotlib on a CPU core: `ArtifactWriter.submit`
hands the run's `RunReport` (plain arrays) to one writer process per worker and returns at once. The
writer draws the files into a temporary folder and logs them to the run. When trials train on the CPU
the writer runs at the lowest scheduling priority (`low_priority`), so that it draws in the time training
leaves idle instead of taking cores from it.

The writer starts with the search (`started`: the CLI calls it as soon as torch is imported), so that it
imports the drawing libraries (seconds) on one core while the search imports MLflow and Optuna on another;
forked where that is safe (`start_method`), it has torch imported already. A job is spooled to a file and only its path
goes through the pipe, so `submit` never waits for a writer that training leaves no CPU to read its pipe.

Nothing handed over is lost: the writer ignores Ctrl-C and SIGTERM (its launcher handles them) and ends
when its connection closes and every report it was given is written, so it finishes its queue even when
the search is killed. `close` waits for it, so that a finished search has all its files (the study's
plots too: `submit_drawing`); what is left by then is shared among forked copies of it, one per free core
(`write_the_rest`). A SIGKILL to the whole process group kills the writer too: the reports it
had not written stay spooled, and the next search on this machine (`adopt_reports_of_dead_writers`) or
`unet-opt figures` writes them. It also runs work that is not waited for, in turn with the reports
(`call`: the study's note for the live view, the study plots' imports).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from unet_opt import runtime
from unet_opt.config.paths import sqlite_file
from unet_opt.parallel.processes import children_ignoring, held_by_the_living, ignore_stops, left_by_the_dead
from unet_opt.tracking.report_files import RunReport, write_report

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 300.0  # seconds a finishing search waits for the files still to be written
LOWEST_PRIORITY = 19
SPOOL_PREFIX = "unet-opt-report-"  # + the writer's pid + "-report-" or "-call-": a job on its way to it
DRAWING_PROCESSES = 8  # at most, sharing the reports left once the search is over
ADOPTED = "-adopted-"  # in a report's name once a later writer took it over from a dead one


class ArtifactWriter:
    """One worker's writer process; `start` it early (its imports then overlap the caller's start-up), or
    it starts with the first report."""

    def __init__(self, tracking_uri: str, low_priority: bool = False):
        self.tracking_uri, self.low_priority = tracking_uri, low_priority
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.reports = 0  # reports handed to the current process: what `close` must wait for

    @classmethod
    def started(cls, tracking_uri: str, device: str) -> ArtifactWriter:
        """A writer for runs that train on `device`, started now; at the lowest priority when they train on
        the CPU, so that it draws in the time training leaves idle."""
        writer = cls(tracking_uri, low_priority=device == "cpu")
        writer.start()
        return writer

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, run_id: str, report: RunReport, folder: Path | None = None) -> None:
        """Draw `report`'s files and log them to the MLflow run `run_id`: copied into its artifact `folder`
        where the run keeps its files on this machine (the writer then never touches the tracking
        database), else logged through MLflow."""
        self.submit_drawing(run_id, write_report, (report,), folder)

    def submit_drawing(self, run_id: str, draw: Callable[..., Any], args: tuple, folder: Path | None = None) -> None:
        """As `submit`, for files that `draw(folder, *args)` writes (a module's function: it goes by name)."""
        self.send(("report", absolute_uri(self.tracking_uri), run_id, draw, args, folder))

    def call(self, work: Callable[..., None], *args: Any) -> None:
        """Run `work(*args)` there, in turn with the reports (a module's function: it goes by name): work
        worth doing but not waited for, as a writer handed no report is not (see `close`)."""
        self.send(("call", work, args))

    def send(self, job: tuple) -> None:
        if self.process is not None and not self.process.is_alive():  # killed (out of memory?): a new one
            log.warning("the artifact writer died (exit code %s); starting another", self.process.exitcode)
            self.close()
            self.adopt_reports_of_dead_writers()  # and the reports it had not written yet
        if self.process is None:
            self.start()
        run = f"{job[2]}-" if job[0] == "report" else ""  # named in a report's name: `runs_being_written`
        fd, partial = tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}{self.process.pid}-partial-{run}", suffix=".pickle")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(job, f)
        spooled = partial.replace("-partial-", f"-{job[0]}-")  # whole, under its kind's name: adoptable
        os.rename(partial, spooled)
        self.conn.send_bytes(spooled.encode())
        self.reports += job[0] == "report"

    def start(self) -> None:
        context = multiprocessing.get_context(start_method())
        forked = context.get_start_method() == "fork"
        log.debug("artifact writer: %s", "forked" if forked else "a new interpreter")
        conn, child_end = context.Pipe()
        verbose = logging.getLogger("unet_opt").isEnabledFor(logging.DEBUG)
        process = context.Process(target=writer_main, name="artifact-writer",
                                  args=(child_end, self.tracking_uri, verbose, conn if forked else None))
        with children_ignoring(signal.SIGINT, signal.SIGTERM):  # the launcher decides when it stops
            process.start()
        if self.low_priority:  # from its first imports on: nice 19 (within this command's process group)
            os.setpriority(os.PRIO_PROCESS, process.pid, LOWEST_PRIORITY)
        child_end.close()
        self.process, self.conn, self.reports = process, conn, 0

    def adopt_reports_of_dead_writers(self) -> None:
        """Take over the reports that killed writers left (a SIGKILL to a search's process group): their runs'
        files are written in turn with this writer's own, and `close` waits for them. Called once the
        command's input has been found good, so that a refused command writes nothing."""
        if self.process is None:
            self.start()
        adopted = adopt_reports_of_dead_writers(self.process.pid)
        for spooled in adopted:
            self.conn.send_bytes(str(spooled).encode())
        self.reports += len(adopted)
        if adopted:
            log.info("writing the files of %d run(s) that a killed search left unwritten", len(adopted))

    def close(self) -> None:
        """Wait until every job handed over is done (at most CLOSE_TIMEOUT seconds); a writer handed no
        report ends at once (after a Ctrl-C in the first seconds, say: its `call`s are not waited for)."""
        if self.process is None:
            return
        if self.low_priority:  # nothing of the search trains now: its last files need not yield to anything,
            with contextlib.suppress(OSError):  # where a process may be raised again (root, RLIMIT_NICE)
                os.setpriority(os.PRIO_PROCESS, self.process.pid, os.getpriority(os.PRIO_PROCESS, 0))
        self.conn.close()  # the writer finishes its queue (its copies forked from now on), then ends
        if not self.reports:  # no run's files to finish: it may still be importing
            self.process.kill()
            self.process.join()  # a killed process at nice 19 on busy cores may take seconds to go
        self.process.join(1.0)
        if self.process.is_alive():
            log.info("writing the last trials' files to MLflow...")
            self.process.join(CLOSE_TIMEOUT)
        if self.process.is_alive():
            log.warning("the trial files still being written after %.0f s are left to the next search on this "
                        "machine, or to `unet-opt figures`", CLOSE_TIMEOUT)
            self.process.kill()
            self.process.join()
        remove_calls_of_dead_writers()  # this one's too, ended before it did them (a writer handed no report)
        self.process = self.conn = None


def remove_calls_of_dead_writers() -> None:
    """The spooled `call`s that ended writers left undone: nobody waits for them. Their reports are kept
    for the next writer."""
    for spooled in left_by_the_dead(SPOOL_PREFIX):
        if not is_report(spooled):
            spooled.unlink(missing_ok=True)


def is_report(spooled: Path) -> bool:
    """A spooled job named as a report's (pid-report-...), as `send` names them."""
    return spooled.name.removeprefix(SPOOL_PREFIX).split("-")[1:2] == ["report"]


def runs_being_written() -> set[str]:
    """The MLflow runs whose files a live writer has yet to write: its spooled reports name them."""
    return {spooled.name.rsplit("-report-", 1)[1].split("-")[0]
            for spooled in held_by_the_living(SPOOL_PREFIX) if is_report(spooled)}


def adopt_reports_of_dead_writers(pid: int) -> list[Path]:
    """The spooled reports of writers that died before writing them (a SIGKILL to a search's process group),
    renamed as the jobs of the live process `pid`; a rename is atomic, so two processes adopting at once
    never both take a report."""
    adopted = []
    for spooled in left_by_the_dead(SPOOL_PREFIX):
        if not is_report(spooled):  # a `call` nobody waits for, or a job its launcher died writing
            spooled.unlink(missing_ok=True)
            continue
        mine = spooled.with_name(f"{SPOOL_PREFIX}{pid}-report{ADOPTED}{spooled.name.removeprefix(SPOOL_PREFIX)}")
        try:
            spooled.rename(mine)
        except FileNotFoundError:  # another process adopted it first
            continue
        adopted.append(mine)
    return adopted


def write_reports_of_dead_writers() -> int:
    """Write here and now the reports that killed writers left (what `unet-opt figures` and a launcher of
    `--workers` find missing otherwise); how many."""
    adopted = adopt_reports_of_dead_writers(os.getpid())
    clients: dict[str, Any] = {}
    for spooled in adopted:
        do_job(spooled, clients)
    return len(adopted)


def absolute_uri(uri: str) -> str:
    """A relative SQLite URI made absolute, so that a writer started elsewhere finds the same store."""
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:////"):
        return uri
    path, query_mark, query = uri.removeprefix("sqlite:///").partition("?")
    return f"sqlite:///{Path(path).resolve()}{query_mark}{query}"


def start_method() -> str:
    """"fork" where it is safe: on Linux, from a process running no other thread (none can hold a lock
    that the copy would find held forever), as a search is when it starts its writer. The copy has torch
    imported (and whatever else its launcher had), which a new interpreter ("spawn") takes seconds to import
    again."""
    return "fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn"


def own_database_pools() -> None:
    """SQLAlchemy's rule for a forked process: every engine inherited from the launcher gets a new pool,
    its connections left to the launcher, so that this process never uses one of them."""
    import gc
    import warnings

    import sqlalchemy

    with warnings.catch_warnings():  # looking at every object touches torch's deprecated aliases
        warnings.simplefilter("ignore")
        engines = [o for o in gc.get_objects() if isinstance(o, sqlalchemy.engine.Engine)]
    for engine in engines:
        engine.dispose(close=False)


def writer_main(conn: Connection, tracking_uri: str, verbose: bool, launcher_end: Connection | None = None) -> None:
    """Receive jobs as they come (paths of spooled files) and do them in turn. `launcher_end`: forked, the
    launcher's end of the pipe, closed here, or the launcher's death would never be seen."""
    ignore_stops(signal.SIGINT, signal.SIGTERM)  # it finishes its queue, then ends: the launcher decides when
    if launcher_end is not None:
        launcher_end.close()
        if "sqlalchemy" in sys.modules:  # else no engine can exist: a search's CLI forks it before any import
            own_database_pools()
    runtime.setup(verbose)
    jobs: queue.Queue = queue.Queue()

    def receive() -> None:
        while True:
            try:
                jobs.put(conn.recv_bytes().decode())
            except (EOFError, OSError):  # closed by the launcher, or the launcher died
                jobs.put(None)
                return

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    import torch

    torch.set_num_threads(1)  # small drawings; and a forked OpenMP pool is not to be used
    from unet_opt.tracking import plots

    plots.import_drawing_libraries()  # now, while the search starts up; the store may not exist yet
    clients: dict[str, Any] = {}  # MLflow's, by tracking URI: not before a report, the store may not exist
    while (spooled := jobs.get()) is not None:
        if receiver.is_alive():
            do_job(Path(spooled), clients)
            continue
        receiver.join()  # ended: its launcher closed the connection, so nothing it runs waits for cores now
        write_the_rest([Path(spooled), *map(Path, iter(jobs.get, None))], clients)
        break


def write_the_rest(spooled: list[Path], clients: dict[str, Any]) -> None:
    """The jobs left when the launcher has closed the connection (at nice 19 the writer gets little CPU while
    trials train on every core, so the last trials' files wait for this): the reports shared among up to
    DRAWING_PROCESSES forked copies of this process, one per free core, this one doing the calls in turn
    before its share. A copy that dies leaves its share spooled, and it is written here."""
    reports = [s for s in spooled if is_report(s)]
    shares = 1
    if start_method() == "fork":
        shares = max(1, min(len(reports), DRAWING_PROCESSES, len(os.sched_getaffinity(0))))
    copies, writer = [], os.getpid()
    for k in range(1, shares):
        try:
            pid = os.fork()
        except OSError:  # no memory or process left for another copy: the shares not taken are written below
            break
        if pid == 0:  # a copy: its share, then out without Python's exit (the writer's state is not its own)
            try:
                for job in reports[k::shares]:
                    if os.getppid() != writer:  # the writer was killed (its close timed out): the rest is spooled
                        break
                    do_job(job, {}, forked=True)
            finally:
                os._exit(0)
        copies.append(pid)
    for job in [*(s for s in spooled if not is_report(s)), *reports[::shares]]:
        do_job(job, clients)
    for pid in copies:
        os.waitpid(pid, 0)
    for job in reports:  # a share no copy took or finished (killed: out of memory?)
        if job.exists():
            do_job(job, clients)


def do_job(spooled: Path, clients: dict[str, Any], forked: bool = False) -> None:
    """One spooled job, done and removed; a failing one is logged, and not worth the others. `forked`: in a
    copy of the writer, whose first MLflow client must not use the writer's database connections."""
    what = "a job"
    try:
        with open(spooled, "rb") as f:
            kind, *job = pickle.load(f)
        if kind == "call":
            work, args = job
            what = f"{work.__name__}"
            work(*args)
            return
        tracking_uri, run_id, draw, args, folder = job
        what = f"the files of MLflow run {run_id}"
        database = sqlite_file(tracking_uri)
        if ADOPTED in spooled.name and database is not None and not database.is_file():  # moved or deleted since
            log.warning("could not write %s: its store %s is gone", what, database)
            return
        with tempfile.TemporaryDirectory() as tmp:
            draw(Path(tmp), *args)
            if folder is not None:  # what MLflow's local artifact store does, without its database
                shutil.copytree(tmp, folder, dirs_exist_ok=True)
                return
            if tracking_uri not in clients:
                if forked and not clients:  # (not before: walking every object takes a copy 0.7 s and 170 MB)
                    own_database_pools()
                from mlflow.tracking import MlflowClient

                clients[tracking_uri] = MlflowClient(tracking_uri)
            clients[tracking_uri].log_artifacts(run_id, tmp)
    except Exception as e:
        log.warning("could not write %s (%s: %s)", what, type(e).__name__, e)
    finally:
        spooled.unlink(missing_ok=True)
