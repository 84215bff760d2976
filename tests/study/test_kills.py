"""A tiny search killed at evenly spaced moments over its whole life (store creation and the end-of-search
logging included), then the same command run again: nothing is lost or repeated, in either store."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import FAST, interruptible, processes_in, wait_until
from mlflow.tracking import MlflowClient

ARGS = [sys.executable, "-m", "unet_opt", "search", "--trials", "2", *FAST]


POINTS = 8  # moments per signal; each signal's are offset from the others', so the three cover 24 in all
OFFSETS = {signal.SIGKILL: 0.25, signal.SIGTERM: 0.5, signal.SIGINT: 0.75}  # of the gap between two moments


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def whole_run_seconds(folder) -> float:
    folder.mkdir()
    start = time.monotonic()
    subprocess.run(ARGS, cwd=folder, env=ENV, capture_output=True, check=True, timeout=300)
    return time.monotonic() - start


def check_no_process_left(folder, output: str, wait: float = 20.0) -> None:
    # a killed search's writer finishes the files it was handed, then ends
    assert wait_until(lambda: not processes_in(folder), timeout=wait, every=0.2), output


def check_both_stores(folder, output: str) -> None:
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{folder}/studies/unet-opt.db")
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    # finished trials equal --trials, trial numbers unique, nothing left running
    assert states.count("COMPLETE") + states.count("PRUNED") == 2 and "RUNNING" not in states, output
    assert len({t.number for t in trials}) == len(trials)
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("unet-opt-default")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("unet_opt.role") == "study"]
    assert len(parents) == 1, output  # one parent run throughout
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], output
    assert {"study_plots.html", "trials.csv", "space.toml"} <= {a.path for a in client.list_artifacts(
        parents[0].info.run_id)}, output
    for t in trials:  # each trial's run ends as its trial did
        run = client.get_run(t.user_attrs["mlflow_run_id"]) if "mlflow_run_id" in t.user_attrs else None
        if run is not None:
            assert run.data.tags["optuna.state"] == t.state.name, output
            assert (run.info.run_name == f"trial-{t.number:04d}") == (t.state.name == "COMPLETE"), output
        if t.state.name in ("COMPLETE", "PRUNED"):  # its files, written in the background, all there
            drawn = {"learning_curves.png", "predictions.png"} if t.state.name == "COMPLETE" else {"figures.npz"}
            expected = {"config.toml"} | (drawn if t.user_attrs["best_epoch"] else set())
            assert expected <= {a.path for a in client.list_artifacts(run.info.run_id)}, output


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_search_killed_at_any_moment_continues_with_the_same_command(tmp_path, sig):
    whole = whole_run_seconds(tmp_path / "timing")
    codes, odd = [], []
    for point in range(1, POINTS + 1):
        folder = tmp_path / f"kill-{point}"
        folder.mkdir()
        search = subprocess.Popen(ARGS, cwd=folder, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  preexec_fn=interruptible)
        moment = whole * (point - 1 + OFFSETS[sig]) / POINTS  # from 3 % of the run (SIGKILL) to 97 % (SIGINT)
        time.sleep(moment)
        search.send_signal(sig)
        first = search.communicate(timeout=300)[0]
        codes.append(search.returncode)
        if search.returncode not in (0, 130, 143, -sig):  # its output, for an exit no stop explains
            odd.append(f"point {point} ({moment:.1f} s), exit {search.returncode}:\n{first[-3000:]}")
        check_no_process_left(folder, f"point {point}, after the signal:\n{first[-2000:]}")
        again = subprocess.run(ARGS, cwd=folder, env=ENV, capture_output=True, text=True, timeout=300)
        output = f"point {point} of {POINTS} ({moment:.1f} s), first run:\n{first[-2000:]}\n" \
                 f"second run:\n{again.stdout[-2000:]}{again.stderr[-2000:]}"
        assert again.returncode == 0, output
        check_no_process_left(folder, output)
        check_both_stores(folder, output)
    # SIGTERM and SIGINT stop a search as Ctrl-C does (143, 130); before the handlers are installed (the
    # interpreter's first tenth of a second) or after the work is done, the signal's own ending is fine
    stopped = {signal.SIGTERM: 143, signal.SIGINT: 130}.get(sig)
    if stopped:
        assert set(codes) <= {0, stopped, -sig} and codes.count(stopped) >= POINTS // 2, (codes, odd)
        assert codes[:POINTS // 2] == [stopped] * (POINTS // 2), codes  # a stop in the first half is never lost
