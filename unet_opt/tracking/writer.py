"""A trial's files drawn and logged in a background process, while the next trial trains.

Drawing a trial's figures takes about a second of matplotlib on a CPU core: `ArtifactWriter.submit`
hands the run's `RunReport` (plain arrays) to one writer process per worker and returns at once. The
writer draws the files into a temporary folder and logs them to the run. When trials train on the CPU
the writer runs at the lowest scheduling priority (`low_priority`), so that it draws in the time training
leaves idle instead of taking cores from it.

Nothing handed over is lost: the writer ignores Ctrl-C and SIGTERM (its launcher handles them) and ends
when its connection closes and every report it was given is written, so it finishes its queue even when
the search is killed. `close` waits for it, so that a finished search has all its files.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import signal
import tempfile
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from unet_opt import runtime
from unet_opt.parallel.processes import children_ignoring
from unet_opt.tracking.report_files import RunReport, write_report

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 300.0  # seconds a finishing search waits for the files still to be written
LOWEST_PRIORITY = 19


class ArtifactWriter:
    """One worker's writer process, started with the first report."""

    def __init__(self, tracking_uri: str, low_priority: bool = False):
        self.tracking_uri, self.low_priority = tracking_uri, low_priority
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, run_id: str, report: RunReport) -> None:
        if self.process is not None and not self.process.is_alive():  # killed (out of memory?): a new one
            log.warning("the artifact writer died (exit code %s); starting another", self.process.exitcode)
            self.close()
        if self.process is None:
            self.start()
        self.conn.send_bytes(pickle.dumps((run_id, report)))

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        conn, child_end = context.Pipe()
        verbose = logging.getLogger("unet_opt").isEnabledFor(logging.DEBUG)
        process = context.Process(target=writer_main, name="artifact-writer",
                                  args=(child_end, self.tracking_uri, verbose))
        with children_ignoring(signal.SIGINT, signal.SIGTERM):  # the launcher decides when it stops
            process.start()
        if self.low_priority:  # from its first imports on: nice 19 (within this command's process group)
            os.setpriority(os.PRIO_PROCESS, process.pid, LOWEST_PRIORITY)
        child_end.close()
        self.process, self.conn = process, conn

    def close(self) -> None:
        """Wait until every report handed over is written (at most CLOSE_TIMEOUT seconds)."""
        if self.process is None:
            return
        self.conn.close()  # the writer finishes its queue, then ends
        self.process.join(1.0)
        if self.process.is_alive():
            log.info("writing the last trials' files to MLflow...")
            self.process.join(CLOSE_TIMEOUT)
        if self.process.is_alive():
            log.warning("the trial files still being written after %.0f s were abandoned", CLOSE_TIMEOUT)
            self.process.kill()
            self.process.join()
        self.process = self.conn = None


def writer_main(conn: Connection, tracking_uri: str, verbose: bool) -> None:
    """Receive reports as they come (so that the launcher never waits on a full pipe) and write them in turn."""
    runtime.setup(verbose)  # it ignores SIGINT and SIGTERM as it started: it finishes its queue, then ends
    reports: queue.Queue = queue.Queue()

    def receive() -> None:
        while True:
            try:
                reports.put(pickle.loads(conn.recv_bytes()))
            except (EOFError, OSError):  # closed by the launcher, or the launcher died
                reports.put(None)
                return

    threading.Thread(target=receive, daemon=True).start()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    while (item := reports.get()) is not None:
        run_id, report = item
        try:
            with tempfile.TemporaryDirectory() as tmp:
                write_report(Path(tmp), report)
                client.log_artifacts(run_id, tmp)
        except Exception as e:  # one run's files are not worth the others'
            log.warning("could not write the files of MLflow run %s (%s: %s)", run_id, type(e).__name__, e)
