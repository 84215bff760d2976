"""What a trial's epochs cost the stores: few Optuna and MLflow calls per epoch, counted."""

import collections
import functools
import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import processes_in, run_search
from mlflow.tracking import MlflowClient

TIMED = {"record_heartbeat", "get_heartbeat_interval"}  # the heartbeat thread's, by the clock, not per epoch


def count_calls(monkeypatch, counts: collections.Counter) -> None:
    """Every public method of MlflowClient and of Optuna's RDB storage counts its calls."""
    for cls, store in ((MlflowClient, "mlflow"), (optuna.storages.RDBStorage, "optuna")):
        for name in [n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))]:
            monkeypatch.setattr(cls, name, counting(getattr(cls, name), (store, name), counts))


def counting(method, key: tuple[str, str], counts: collections.Counter):
    @functools.wraps(method)
    def counted(*args, **kwargs):
        if key[1] not in TIMED:
            counts[key] += 1
        return method(*args, **kwargs)

    return counted


@pytest.mark.slow
def test_each_epoch_costs_one_mlflow_call_and_two_optuna_calls(tmp_path, monkeypatch):
    # two searches of 2 trials alike but for their epochs (2, then 5): the difference is what 6 epochs cost
    totals = {}
    for epochs in (2, 5):
        counts: collections.Counter = collections.Counter()
        with monkeypatch.context() as patch:
            count_calls(patch, counts)
            (tmp_path / f"e{epochs}").mkdir()
            run_search(tmp_path / f"e{epochs}", 2, f"space.epochs.high={epochs}", f"space.epochs.low={epochs}",
                       'search.pruner="median"', "train.patience=9")
        totals[epochs] = counts
    extra = totals[5] - totals[2]
    per_epoch = {store: sum(n for (s, _), n in extra.items() if s == store) / 6 for store in ("mlflow", "optuna")}
    assert per_epoch["mlflow"] <= 1, extra  # the epoch's metrics in one batch
    assert per_epoch["optuna"] <= 2, extra  # the report and the pruning question


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
    deadline = time.monotonic() + 120
    while processes_in(tmp_path) and time.monotonic() < deadline:  # the writer, finishing on its own
        time.sleep(0.2)
    assert processes_in(tmp_path) == []  # and then gone
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
