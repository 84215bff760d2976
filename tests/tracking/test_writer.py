"""The background writer of a run's files: it finishes what it was handed, whatever happens to its launcher."""

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from conftest import processes_in, wait_until
from mlflow.tracking import MlflowClient

from unet_opt.tracking import writer as writer_module
from unet_opt.tracking.report_files import RunReport, write_report
from unet_opt.tracking.writer import (
    LOWEST_PRIORITY,
    SPOOL_PREFIX,
    ArtifactWriter,
    own_database_pools,
    start_method,
    write_reports_of_dead_writers,
    write_the_rest,
)


@pytest.mark.slow  # a search in a subprocess or a kill: over 10 s on a 2-core CPU
def test_the_writer_finishes_what_it_was_handed_when_its_search_is_killed(tmp_path):
    # a process hands five runs' reports to its writer and is killed once the first is written: the others still arrive
    script = f"""
import os, signal, time
from pathlib import Path
from unet_opt.tracking.report_files import RunReport
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.writer import ArtifactWriter
tracker = Tracker("sqlite:///{tmp_path}/mlruns/mlflow.db", "s", Path("{tmp_path}/mlruns/artifacts"))
writer = ArtifactWriter(tracker.uri)
ids = [tracker.start_run(f"r{{i}}", {{}}, {{}}) for i in range(5)]
for run_id in ids:
    writer.submit(run_id, RunReport("a = 1\\n", "val_dice", [{{"train_loss": 1.0, "val_dice": 0.5}}], 1))
print(" ".join(ids), flush=True)
while not tracker.client.list_artifacts(ids[0]):  # the writer is up and busy: the others are still queued
    time.sleep(0.05)
os.kill(os.getpid(), signal.SIGKILL)
"""
    killed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ids = killed.stdout.split()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert wait_until(lambda: not processes_in(tmp_path), timeout=120, every=0.2)  # the writer ends on its own
    for run_id in ids:
        assert {a.path for a in client.list_artifacts(run_id)} == {"config.toml", "learning_curves.png"}


@pytest.mark.slow  # a search in a subprocess or a kill: over 10 s on a 2-core CPU
def test_a_ctrl_c_while_the_writer_starts_does_not_end_it(tmp_path):
    # a terminal's Ctrl-C reaches every process of the group, the writer too, even while it imports
    script = f"""
import os, signal
from pathlib import Path
from unet_opt.tracking.report_files import RunReport
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.writer import ArtifactWriter
tracker = Tracker("sqlite:///{tmp_path}/mlruns/mlflow.db", "s", Path("{tmp_path}/mlruns/artifacts"))
run_id = tracker.start_run("r", {{}}, {{}})
writer = ArtifactWriter(tracker.uri)
writer.start()
os.kill(writer.process.pid, signal.SIGINT)
writer.submit(run_id, RunReport("a = 1\\\\n", "val_dice", [{{"train_loss": 1.0, "val_dice": 0.5}}], 1))
process = writer.process
writer.close()
print(run_id, process.exitcode)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run_id, code = done.stdout.split()
    assert code == "0" and "KeyboardInterrupt" not in done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.toml", "learning_curves.png"}


@pytest.mark.skipif(os.geteuid() != 0, reason="only root (or a raised RLIMIT_NICE) may raise a process's priority")
def test_a_finishing_search_s_last_files_are_drawn_at_its_own_priority(tmp_path):
    # at nice 19, on cores that other programs keep busy, a finished search waited minutes for its writer
    writer = ArtifactWriter(f"sqlite:///{tmp_path}/mlflow.db", low_priority=True)
    writer.start()
    pid = writer.process.pid
    writer.submit("run", RunReport("a = 1\n", "val_dice", [{"train_loss": 1.0, "val_dice": 0.5}], 1),
                  tmp_path / "files")
    priorities = []
    closing = threading.Thread(target=writer.close)
    closing.start()
    while closing.is_alive():
        with contextlib.suppress(OSError):  # it has ended
            priorities.append(os.getpriority(os.PRIO_PROCESS, pid))
        time.sleep(0.01)
    closing.join()
    assert priorities and priorities[-1] == os.getpriority(os.PRIO_PROCESS, 0), priorities  # it drew at it
    assert (tmp_path / "files" / "learning_curves.png").exists()


@pytest.mark.slow
def test_the_writer_of_trials_on_the_cpu_draws_at_the_lowest_priority(tmp_path):
    # it draws in the time training leaves idle, instead of taking cores from training; and it never touches
    # the local tracking database, so that it holds no lock on it while training starves it
    writer = ArtifactWriter(f"sqlite:///{tmp_path}/mlflow.db", low_priority=True)
    writer.start()
    try:
        assert os.getpriority(os.PRIO_PROCESS, writer.process.pid) == LOWEST_PRIORITY == 19
        writer.submit("run", RunReport("a = 1\n", "val_dice", [{"train_loss": 1.0, "val_dice": 0.5}], 1),
                      tmp_path / "files")  # the run's artifact folder: written without MLflow
        assert wait_until(lambda: (tmp_path / "files" / "learning_curves.png").exists(), timeout=120)
    finally:
        writer.close()
    assert writer.process is None  # it ended once its connection closed
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["config.toml", "learning_curves.png"]
    assert not (tmp_path / "mlflow.db").exists()  # the tracking database untouched


def test_the_writer_runs_work_handed_to_it_in_turn_and_leaves_no_spooled_job_behind(tmp_path, monkeypatch):
    # jobs travel as files in the temporary folder (the pipe carries their paths): each is removed once done
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    writer = ArtifactWriter(f"sqlite:///{tmp_path}/mlflow.db")
    writer.start()
    writer.call(os.mkdir, str(tmp_path / "first"))
    writer.call(os.rename, str(tmp_path / "first"), str(tmp_path / "second"))  # after the first, not beside it
    writer.call(os.mkdir, str(tmp_path / "second"))  # fails (it exists): a warning, and the writer goes on
    writer.call(os.mkdir, str(tmp_path / "third"))
    try:
        assert wait_until(lambda: (tmp_path / "third").exists(), timeout=120)
    finally:
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["second", "third", "tmp"]
    assert wait_until(lambda: not list(spool.glob(f"{SPOOL_PREFIX}*")), timeout=10)


def test_a_writer_handed_no_report_ends_at_once_when_closed_and_leaves_no_job_behind(tmp_path, monkeypatch):
    # a search refused for bad input, stopped by Ctrl-C in its first seconds, or with nothing to do, has
    # handed its writer nothing or only the study's note: closing it must not wait for the writer's imports
    # and the note, nor leave the jobs it did not do in the temporary folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    writer = ArtifactWriter(f"sqlite:///{tmp_path}/mlflow.db")
    writer.start()
    writer.call(time.sleep, 600)
    writer.call(time.sleep, 600)  # queued behind the first
    process = writer.process
    started = time.monotonic()
    writer.close()
    assert not process.is_alive() and writer.process is None
    assert time.monotonic() - started < 300  # not the writer's CLOSE_TIMEOUT (the sleep alone is 600 s)
    assert not list(tmp_path.glob(f"{SPOOL_PREFIX}*"))


def test_closing_a_writer_handed_no_report_never_says_it_writes_files_however_slowly_it_dies(caplog):
    # under load a killed writer at nice 19 took over a second to go, and a command refusing bad input
    # printed "writing the last trials' files to MLflow..." before its one `error:` line
    class SlowToDie:  # gone only once waited for without a timeout
        pid, killed, gone = 2 ** 22 + 1, False, False

        def kill(self):
            self.killed = True

        def join(self, timeout=None):
            self.gone = self.gone or (self.killed and timeout is None)

        def is_alive(self):
            return not self.gone

    writer = ArtifactWriter("sqlite:///unused.db")
    writer.process, writer.conn, writer.reports = SlowToDie(), multiprocessing.Pipe()[0], 0
    with caplog.at_level(logging.INFO, logger="unet_opt"):
        writer.close()
    assert caplog.text == "" and writer.process is None


def test_the_writer_is_forked_only_from_a_process_running_no_other_thread():
    # another thread could hold a lock (SQLite's, an allocator's) at the instant of the fork, forever in the copy
    assert start_method() == ("fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn")
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert start_method() == "spawn"
    finally:
        stop.set()
        other.join()


def test_a_forked_writer_leaves_the_launcher_s_database_connections_to_it(tmp_path):
    # SQLAlchemy's rule after a fork: each inherited engine gets a new pool; the old connections stay open
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/x.db")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE t (x INTEGER)"))
        launchers = connection.connection.dbapi_connection
    before = engine.pool
    own_database_pools()
    assert engine.pool is not before
    assert launchers.execute("SELECT count(*) FROM t").fetchone() == (0,)  # not closed
    with engine.connect() as connection:  # a connection of its own
        assert connection.connection.dbapi_connection is not launchers


def dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()


def spool_report(folder, pid: str, tracking_uri: str, run_id: str, files) -> None:
    """A report job as a writer's launcher spools it, left by the writer of process `pid`."""
    job = ("report", tracking_uri, run_id, write_report, (RunReport("a = 1\n", "val_dice", [], 0),), files)
    (folder / f"{SPOOL_PREFIX}{pid}-report-{run_id}.pickle").write_bytes(pickle.dumps(job))


@pytest.mark.slow
def test_a_writer_adopting_does_the_reports_a_killed_writer_left_and_removes_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = dead_pid()
    (tmp_path / "mlflow.db").write_bytes(b"")  # the store the report belongs to still exists
    spool_report(tmp_path, dead, f"sqlite:///{tmp_path}/mlflow.db", "r1", tmp_path / "files")
    call = tmp_path / f"{SPOOL_PREFIX}{dead}-call-abc.pickle"  # nobody waits for a call
    partial = tmp_path / f"{SPOOL_PREFIX}{dead}-partial-abc.pickle"  # its launcher died writing it
    queued = tmp_path / f"{SPOOL_PREFIX}{os.getpid()}-report-def.pickle"  # a live writer's job, still to be done
    for path in (call, partial, queued):
        path.write_bytes(b"job")
    writer = ArtifactWriter(f"sqlite:///{tmp_path}/mlflow.db")
    writer.start()
    writer.adopt_reports_of_dead_writers()  # once the command's input is found good
    writer.close()
    assert (tmp_path / "files" / "config.toml").read_text() == "a = 1\n"
    assert sorted(tmp_path.glob(f"{SPOOL_PREFIX}*")) == [queued]


def test_a_killed_search_s_report_whose_store_is_gone_is_not_written(tmp_path, monkeypatch, caplog):
    # the killed search's folder was moved or deleted since: its run's folder must not come back as a ghost
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spool_report(tmp_path, dead_pid(), f"sqlite:///{tmp_path}/gone/mlruns/mlflow.db", "r1",
                 tmp_path / "gone" / "mlruns" / "artifacts" / "1" / "r1" / "artifacts")
    with caplog.at_level(logging.WARNING):
        assert write_reports_of_dead_writers() == 1
    assert not (tmp_path / "gone").exists() and not list(tmp_path.glob(f"{SPOOL_PREFIX}*"))
    assert "could not write the files of MLflow run r1: its store" in caplog.text


@pytest.mark.slow
def test_the_next_writer_writes_what_a_search_killed_with_its_writer_left(tmp_path):
    # SIGKILL to the search's whole process group, while its writer imports: every report handed over is
    # left spooled, and the next writer on this machine (the next search's) writes them
    spool = tmp_path / "tmp"
    spool.mkdir()
    script = """
import os, signal
from pathlib import Path
from unet_opt.tracking.report_files import RunReport
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.writer import ArtifactWriter
tracker = Tracker("sqlite:///mlruns/mlflow.db", "s", Path("mlruns/artifacts").resolve())  # a relative URI
writer = ArtifactWriter(tracker.uri)
ids = [tracker.start_run(f"r{i}", {}, {}) for i in range(3)]
for run_id in ids:
    writer.submit(run_id, RunReport("a = 1\\n", "val_dice", [{"train_loss": 1.0, "val_dice": 0.5}], 1))
print(" ".join(ids), flush=True)
os.killpg(0, signal.SIGKILL)
"""
    killed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            start_new_session=True, env={**os.environ, "TMPDIR": str(spool)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ids = killed.stdout.split()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert wait_until(lambda: not processes_in(tmp_path), timeout=60, every=0.2)
    assert not any(client.list_artifacts(run_id) for run_id in ids)  # killed before it wrote any
    assert len(list(spool.glob(f"{SPOOL_PREFIX}*-report-*"))) == 3
    elsewhere = tmp_path / "elsewhere"  # the next search, in another folder and store
    elsewhere.mkdir()
    said = []  # the writer's own logger: whatever an earlier test did to the package's logging
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append(record.getMessage())
    writer_log = logging.getLogger("unet_opt.tracking.writer")
    writer_log.addHandler(handler)
    level, disabled = writer_log.level, writer_log.disabled
    writer_log.setLevel(logging.INFO)
    writer_log.disabled = False
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tempfile, "tempdir", str(spool))
            patch.chdir(elsewhere)
            with ArtifactWriter(f"sqlite:///{elsewhere}/mlflow.db") as writer:
                writer.start()
                writer.adopt_reports_of_dead_writers()
    finally:
        writer_log.removeHandler(handler)
        writer_log.setLevel(level)
        writer_log.disabled = disabled
    assert "writing the files of 3 run(s) that a killed search left unwritten" in said
    for run_id in ids:
        assert {a.path for a in client.list_artifacts(run_id)} == {"config.toml", "learning_curves.png"}
    assert not list(spool.glob(f"{SPOOL_PREFIX}*"))


@pytest.mark.slow
def test_a_writer_killed_alone_is_replaced_and_its_undone_reports_are_written(tmp_path, monkeypatch):
    # killed by the kernel for memory, say, while its launcher goes on: the next report starts another
    # writer, which writes the reports that the dead one had not
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "mlflow.db").write_bytes(b"")  # the runs' store
    report = RunReport("a = 1\n", "val_dice", [], 0)
    with ArtifactWriter(f"sqlite:///{tmp_path}/mlflow.db") as writer:
        for i in range(3):
            writer.submit(f"r{i}", report, tmp_path / f"files{i}")
        first = writer.process
        first.kill()  # while it still imports: none written
        first.join()
        writer.submit("r3", report, tmp_path / "files3")
        assert writer.process is not first
    for i in range(4):
        assert (tmp_path / f"files{i}" / "config.toml").read_text() == "a = 1\n"
    assert not list(tmp_path.glob(f"{SPOOL_PREFIX}*"))


def record_drawer(folder, name: str, launcher: int) -> None:
    """A drawing (by name, as the writer takes them) that says which process drew it: the writer's a
    child of `launcher`, a copy sharing its last reports a grandchild."""
    (folder / f"{name}.drawn").write_text("writer" if os.getppid() == launcher else "copy")


def killed_once_in_a_copy(folder, name: str, launcher: int, marker: str) -> None:
    """As `record_drawer`, but a copy drawing it the first time dies there (out of memory, say)."""
    if os.getppid() != launcher and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    record_drawer(folder, name, launcher)


multicore_linux = pytest.mark.skipif(sys.platform != "linux" or len(os.sched_getaffinity(0)) < 2,
                                     reason="copies share the last reports on Linux, with 2 cores or more")


@multicore_linux
def test_the_reports_left_when_the_search_ends_are_drawn_on_every_free_core(tmp_path, monkeypatch):
    # at nice 19 the writer gets little CPU while trials train, so that tiny trials' files piled up behind
    # the search and were drawn one by one after it (6 s for 8 trials on 2 cores): once the launcher has
    # closed the connection, copies of the writer take shares of them
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    writer = ArtifactWriter(f"sqlite:///{tmp_path}/mlflow.db")
    writer.start()  # its imports take seconds: the reports are all queued when it closes
    for i in range(4):
        writer.submit_drawing(f"r{i}", record_drawer, (f"r{i}", os.getpid()), tmp_path / "files")
    writer.close()
    drawn = {p.stem: p.read_text() for p in (tmp_path / "files").iterdir()}
    assert sorted(drawn) == ["r0", "r1", "r2", "r3"]
    assert set(drawn.values()) == {"writer", "copy"}
    assert not list(tmp_path.glob(f"{SPOOL_PREFIX}*"))


@multicore_linux
def test_a_copy_that_dies_leaves_its_share_to_the_writer(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    marker = tmp_path / "a copy died"
    writer = ArtifactWriter(f"sqlite:///{tmp_path}/mlflow.db")
    writer.start()
    for i in range(4):
        writer.submit_drawing(f"r{i}", killed_once_in_a_copy, (f"r{i}", os.getpid(), str(marker)), tmp_path / "files")
    writer.close()
    assert marker.exists()
    assert sorted(p.stem for p in (tmp_path / "files").iterdir()) == ["r0", "r1", "r2", "r3"]
    assert not list(tmp_path.glob(f"{SPOOL_PREFIX}*"))


def slow_drawer(folder, name: str, started: str) -> None:
    open(started, "w").close()
    time.sleep(2)
    (folder / f"{name}.drawn").write_text("")


def test_work_left_behind_the_last_report_when_the_search_ends_is_done(tmp_path, monkeypatch):
    # the connection closes while the writer draws its last report, with only a call queued behind it:
    # no report is left to share (the writer once failed there on a slice step of 0, leaving the call)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    writer = ArtifactWriter(f"sqlite:///{tmp_path}/mlflow.db")
    writer.start()
    writer.submit_drawing("r0", slow_drawer, ("r0", str(tmp_path / "started")), tmp_path / "files")
    assert wait_until((tmp_path / "started").exists, timeout=120)
    writer.call(os.mkdir, str(tmp_path / "called"))
    writer.close()
    assert (tmp_path / "files" / "r0.drawn").exists() and (tmp_path / "called").is_dir()
    assert not list(tmp_path.glob(f"{SPOOL_PREFIX}*"))


@multicore_linux
def test_when_no_copy_can_be_forked_the_writer_writes_every_share_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(writer_module, "start_method", lambda: "fork")  # as in a writer: it would fork copies
    spooled = []
    for i in range(3):
        job = ("report", f"sqlite:///{tmp_path}/mlflow.db", f"r{i}", record_drawer, (f"r{i}", os.getppid()),
               tmp_path / "files")
        spooled.append(tmp_path / f"{SPOOL_PREFIX}{os.getpid()}-report-r{i}.pickle")
        spooled[-1].write_bytes(pickle.dumps(job))

    def no_fork():
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", no_fork)
    write_the_rest(spooled, {})
    assert {p.stem: p.read_text() for p in (tmp_path / "files").iterdir()} == dict.fromkeys(["r0", "r1", "r2"], "writer")
    assert not list(tmp_path.glob(f"{SPOOL_PREFIX}*"))
