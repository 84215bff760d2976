"""The background writer of a run's files: it finishes what it was handed, whatever happens to its launcher."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import processes_in, wait_until
from mlflow.tracking import MlflowClient

from unet_opt.tracking.writer import LOWEST_PRIORITY, ArtifactWriter


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


@pytest.mark.slow
def test_the_writer_of_trials_on_the_cpu_draws_at_the_lowest_priority(tmp_path):
    # it draws in the time training leaves idle, instead of taking cores from training
    writer = ArtifactWriter(f"sqlite:///{tmp_path}/mlflow.db", low_priority=True)
    writer.start()
    try:
        assert os.getpriority(os.PRIO_PROCESS, writer.process.pid) == LOWEST_PRIORITY == 19
    finally:
        writer.close()
    assert writer.process is None  # it ended once its connection closed

