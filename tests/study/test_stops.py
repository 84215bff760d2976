"""Stops and kills at the moments that matter: Ctrl-C, SIGTERM and SIGKILL, then the same command."""

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import FAST, interruptible, processes_in, run_search
from mlflow.tracking import MlflowClient

from unet_opt.parallel.processes import worker_id

# where the first trial's process dies with SIGKILL: a stand-in fit from tests/fits.py
KILL_POINTS = {"before the first epoch": "die", "after the first epoch": "die_after_first_epoch",
               "while logging artifacts": "die_while_logging_artifacts"}


def load(home):
    return optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")


# where a new study's setup is SIGKILLed: the module and function to patch, and the key at which it kills
SETUP_KILL_POINTS = {"as the study is created": ("unet_opt.study.storage", "store_setup", "creator"),
                     "after the study is created": ("unet_opt.study.storage", "store_setup", "config"),
                     "after its parent run is made": ("optuna", "Study.set_user_attr", "mlflow_parent_run_id"),
                     # a container restarted after an OOM kill: same host name, and the command gets the same pid
                     "by a process whose pid this one now has": ("unet_opt.study.storage", "store_setup", "config")}


def command_dropping_a_stop(sig: int, module: str, function: str, argv: list[str]) -> str:
    """Python source running `unet-opt ARGV` with `module.function` patched to send `sig` to its own process
    from inside a `__del__` first: the handler's exception is raised there, and Python drops it."""
    return ("import os, time\n"
            f"import {module} as patched\n"
            "class Finalized:\n"
            f"    def __del__(self):\n        os.kill(os.getpid(), {int(sig)})\n        time.sleep(0.1)\n"
            f"real = patched.{function}\n"
            "def dropping(*args):\n    Finalized()\n    return real(*args)\n"
            f"patched.{function} = dropping\n"
            f"from unet_opt.cli.app import main\nmain({argv!r})\n")


# where a stop signal lands in a finalizer: the function that makes one, and the command's extra options
DROPPED_STOPS = {"SIGINT while the stores are set up": (signal.SIGINT, "check_stores_agree", []),
                 "SIGTERM while the stores are set up": (signal.SIGTERM, "check_stores_agree", []),
                 "SIGTERM while workers search": (signal.SIGTERM, "run_workers", ["--workers", "2"])}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_the_same_command_recovers(home, cli, point):
    args = ["search", "--trials", "2", "--pruner", "none", *FAST]
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              "import fits\nfrom conftest import run_search\nfrom pathlib import Path\n"
              f"run_search(Path('.'), 2, 'search.pruner=\"none\"', fit=fits.{KILL_POINTS[point]})\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=home, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert [t.state.name for t in load(home).trials] == ["RUNNING"]  # the dead trial, as the kill left it

    code, _, err = cli(*args)
    assert code == 0, err
    trials = load(home).trials
    # the dead trial is FAIL with a reason, two more finished, numbers 0, 1, 2: none reused
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"] == "worker died (killed or crashed)"
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("unet-opt-default")
    runs = client.search_runs([exp.experiment_id])
    # in MLflow too: the dead trial's run FAILED, nothing RUNNING, one parent run throughout
    dead = client.get_run(trials[0].user_attrs["mlflow_run_id"])
    assert dead.info.status == "FAILED" and dead.data.tags["optuna.state"] == "FAIL"
    assert dead.info.run_name == "trial-0000 (fail)"  # told apart in the runs table as it opens
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert len([r for r in runs if r.data.tags.get("unet_opt.role") == "study"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("point", list(SETUP_KILL_POINTS))
def test_a_study_whose_setup_was_killed_is_set_up_by_the_same_command_at_once(home, cli, monkeypatch, point):
    """SIGKILL while a new study is being set up, by the command that created it. The same command does not
    wait for a setup that will never finish (it used to, for 30 s) and ends with one parent run: the one the
    killed command made in MLflow (before the run had its params) is taken up, not made a second time."""
    module, function, key = SETUP_KILL_POINTS[point]
    owner, _, name = f"{module}.{function}".rpartition(".")
    script = (f"import sys, os, signal; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              f"from pathlib import Path\nimport {module}, mlflow\nfrom conftest import run_search\n"
              f"real = {owner}.{name}\n"
              "def killed(*args):\n"
              f"    if {key!r} in args: os.kill(os.getpid(), signal.SIGKILL)\n"
              "    real(*args)\n"
              f"{owner}.{name} = killed\n"
              "mlflow.tracking.MlflowClient.log_batch = lambda *a, **k: None  # killed before the params, too\n"
              "run_search(Path('.'), 1)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=home, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    if point == "by a process whose pid this one now has":
        storage = load(home)._storage
        storage.set_study_system_attr(load(home)._study_id, "unet_opt:creator", worker_id())

    def no_waiting(seconds):
        raise AssertionError("waited for the setup of a command that is dead")

    monkeypatch.setattr("unet_opt.study.storage.time", SimpleNamespace(monotonic=time.monotonic, sleep=no_waiting))
    monkeypatch.setattr("unet_opt.study.storage.UNRECORDED_CREATOR_SECONDS", 0)  # 5 s: a creator that is alive
    # records itself in milliseconds; one killed before that leaves no trace
    code, _, err = cli("search", "--trials", "1", *FAST)
    assert code == 0, err
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("unet-opt-default").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("unet_opt.role") == "study"]
    assert load(home).user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert parent.data.params["sampler"] == "tpe" and parent.info.status == "FINISHED"
    [trial] = [r for r in runs if "optuna.trial" in r.data.tags]
    assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert load(home).trials[0].state.name in ("COMPLETE", "PRUNED")


@pytest.mark.slow
def test_a_trial_asked_for_but_never_claimed_is_closed_after_the_grace_period(home, cli, monkeypatch):
    """A SIGKILL between Optuna's ask and the worker recording itself leaves a RUNNING trial with no worker and
    no heartbeat. The same command waits out the grace period, closes it and still runs the trials asked for."""
    run_search(home, 1)
    study = load(home)
    study._storage.create_new_trial(study._study_id)  # RUNNING, no worker: what such a kill leaves
    monkeypatch.setattr("unet_opt.study.ledger.GRACE_SECONDS", 2)
    code, _, err = cli("search", "--trials", "2", *FAST)
    assert code == 0, err
    trials = load(home).trials
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["fail_reason"] == "worker died (killed or crashed)"
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 2 and len(trials) == 3
    assert "waiting for trial #1 to be claimed" in err


# where a Ctrl-C lands as a trial begins (a --workers launcher passes a stop on at once: it can land there),
# and whether the trial is claimed by then (without the record, the next command would call it dead)
TRIAL_START_STOPS = {"between asking and claiming": ("unet_opt.study.ledger.is_surplus", False),
                     "as the claimed trial's heartbeat starts": ("unet_opt.study.objective.Heartbeat.__enter__", True)}


@pytest.mark.slow  # a search's start and its interrupted end: over 10 s on a 2-core CPU
@pytest.mark.parametrize("point", list(TRIAL_START_STOPS))
def test_an_interrupt_as_a_trial_begins_records_it_interrupted(home, cli, monkeypatch, point):
    def interrupted(*_):
        raise KeyboardInterrupt

    target, claimed = TRIAL_START_STOPS[point]
    monkeypatch.setattr(target, interrupted)
    code, _, err = cli("search", "--trials", "2", *FAST)
    assert code == 130, err
    [trial] = load(home).trials
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "interrupted"
    assert ("worker" in trial.user_attrs) == claimed


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DROPPED_STOPS))
def test_a_stop_signal_that_lands_in_a_finalizer_still_stops_the_search(tmp_path, case):
    """Python drops an exception raised inside a `__del__` or a weakref callback ("Exception ignored in ...").
    A Ctrl-C that landed there during the start (seen in a WeakKeyDictionary callback at 4 s) used to be lost,
    and the search ran to its end. Here the signal is sent from inside a finalizer as the search's process
    sets up its stores, or as it starts its workers (which the signal, sent to it alone, does not reach)."""
    sig, where, options = DROPPED_STOPS[case]
    script = command_dropping_a_stop(sig, "unet_opt.study.search", where, ["search", "--trials", "2", *FAST, *options])
    home = tmp_path / "project"  # not the test's working folder: no process is to be left in it
    home.mkdir()
    proc = subprocess.run([sys.executable, "-c", script], cwd=home, capture_output=True, text=True, timeout=300,
                          preexec_fn=interruptible)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not [t for t in load(home).trials if t.state.name in ("COMPLETE", "PRUNED")], proc.stderr
    assert processes_in(home) == []


@pytest.mark.slow
def test_a_stop_that_no_safe_point_raises_again_still_ends_the_command_as_stopped(searched_home):
    """A Ctrl-C dropped in a finalizer where no safe point follows (`studies` has none) used to end the
    command with exit 0 and nothing said; with Python's "Exception ignored" hidden, it would vanish."""
    script = command_dropping_a_stop(signal.SIGINT, "unet_opt.study.summary", "list_studies", ["studies"])
    proc = subprocess.run([sys.executable, "-c", script], cwd=searched_home, capture_output=True, text=True,
                          timeout=300, preexec_fn=interruptible)
    assert proc.returncode == 130 and proc.stderr.strip().splitlines()[-1] == "interrupted", proc.stderr


@pytest.mark.slow
def test_a_parent_run_killed_once_the_trials_were_done_ends_finished_with_the_same_command(home, cli):
    """SIGTERM to a `--workers` launcher whose workers then finish their trials within the grace: the study
    is complete but its parent run was ended KILLED, and the same command ("nothing to do") left it so."""
    run_search(home, 1)
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    parent = load(home).user_attrs["mlflow_parent_run_id"]
    client.set_terminated(parent, "KILLED")
    code, out, err = cli("search", "--trials", "1", *FAST)
    assert code == 0 and "already has 1 finished trial" in out, err
    assert client.get_run(parent).info.status == "FINISHED"


def command_stopped_inside_torch_s_start_up(sig: int, c_function: str, argv: list[str]) -> str:
    """Python source running `unet-opt ARGV` that sends `sig` to its own process from the first Python code
    torch's C++ `c_function` calls back as torch is imported (a profile hook, set before anything imports)."""
    return ("import os, sys\n"
            "inside = False\n"
            "def hook(frame, event, arg):\n"
            "    global inside\n"
            f"    if event == 'c_call' and getattr(arg, '__name__', '') == {c_function!r}:\n"
            "        inside = True\n"
            "    elif event == 'call' and inside:\n"
            f"        sys.setprofile(None)\n        os.kill(os.getpid(), {int(sig)})\n"
            "sys.setprofile(hook)\n"
            f"from unet_opt.cli.app import main\nmain({argv!r})\n")


@pytest.mark.parametrize("sig, c_function", [(signal.SIGINT, "_multiprocessing_init"),
                                             (signal.SIGTERM, "_c10d_init")], ids=["SIGINT", "SIGTERM"])
def test_a_stop_inside_torch_s_import_ends_the_command_as_stopped_not_aborted(tmp_path, sig, c_function):
    """A stop raised in Python code that torch's C++ start-up calls cannot unwind through C++: the search
    aborted (SIGABRT, 'terminate called after throwing an instance of pybind11::error_already_set') or
    crashed, instead of saying `interrupted`. Now it is held until torch is imported."""
    source = command_stopped_inside_torch_s_start_up(sig, c_function, ["search", "--trials", "1", *FAST])
    done = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, preexec_fn=interruptible)
    expected = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}[sig]
    assert (done.returncode, done.stderr.strip().splitlines()[-1:]) == (expected[0], [expected[1]]), done.stderr


@pytest.mark.slow
def test_real_sigint_records_the_trial_and_exits_130(home):
    import os
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "unet_opt", "search", "--trials", "3", "--pruner", "none", *FAST,
                             "--set", "space.epochs.high=30", "--set", "space.epochs.low=20"],
                            cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=interruptible)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "epoch 1/" not in proc.stderr.readline():
        pass
    proc.send_signal(signal.SIGINT)  # mid-trial, as Ctrl-C would
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in out and "run the same command again" in out
    trial = load(home).trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "interrupted"
    run = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db").get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"


def test_a_sigterm_that_surfaces_as_another_error_still_exits_143(home, cli, monkeypatch):
    """SIGTERM inside an import (numpy's lazy attributes, scipy's module cloning) can come out as some other
    error, a RecursionError in CI: the search still reports it as terminated, not as a crash."""
    import os

    def import_cut_short(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            raise RecursionError("maximum recursion depth exceeded") from None

    monkeypatch.setattr("unet_opt.study.search.run_search", import_cut_short)
    code, _, err = cli("search", "--trials", "1", *FAST)
    assert (code, err.strip()) == (143, "terminated")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_while_the_study_s_last_files_are_written_lets_them_finish(tmp_path, sig):
    """Ctrl-C in the last seconds of a search, while it draws the study's plots: the plots, the note and the
    parent run's end used to be cut off (the parent left RUNNING). They now finish; the command still ends
    as stopped."""
    script = ("import os\nimport unet_opt.study.search as patched\n"
              "real = patched.log_study_artifacts\n"
              f"def stopped_midway(*args):\n    os.kill(os.getpid(), {int(sig)})\n    return real(*args)\n"
              "patched.log_study_artifacts = stopped_midway\n"
              f"from unet_opt.cli.app import main\nmain({['search', '--trials', '1', *FAST]!r})\n")
    home = tmp_path / "project"
    home.mkdir()
    proc = subprocess.run([sys.executable, "-c", script], cwd=home, capture_output=True, text=True, timeout=300,
                          preexec_fn=interruptible)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], proc.stderr
    assert "press Ctrl-C again to stop now" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    parent = client.get_run(load(home).user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"  # the search's trials were done: the study is complete
    assert {"study_plots.html", "trials.csv", "space.toml"} <= {a.path for a in client.list_artifacts(
        parent.info.run_id)}
