"""Several workers on one study: only the trials still needed, different trials, stopped together."""

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import fits
import optuna
import pytest
from conftest import FAST, children_of, interruptible, run_search, wait_until
from mlflow.tracking import MlflowClient

from unet_opt import runtime
from unet_opt.study.ledger import is_surplus
from unet_opt.study.workers import stop_workers


def child_runs(tracking_uri: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(f"unet-opt-{experiment}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("unet_opt.role") == "study"]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def both_workers_training(storage: str, search: subprocess.Popen) -> bool:
    """Two trials RUNNING with their MLflow runs open (both workers past their trials' start), or the search over."""
    try:
        trials = optuna.load_study(study_name="default", storage=storage).get_trials(deepcopy=False)
    except Exception:  # the storage or the study is not there yet
        return False
    training = [t for t in trials if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs]
    return len(training) == 2 or search.poll() is not None


def test_two_workers_asking_at_once_start_only_the_trials_still_needed():
    study = optuna.create_study()
    for _ in range(4):
        study.tell(study.ask(), 0.5)
    running = study.ask()  # 4 finished + 1 running: both workers see room for a 6th trial and ask
    first, second = study.ask(), study.ask()
    assert not is_surplus(study, running.number, 6) and not is_surplus(study, first.number, 6)
    assert is_surplus(study, second.number, 6)
    study._storage.set_trial_state_values(second._trial_id, optuna.trial.TrialState.WAITING)
    study.tell(running, state=optuna.trial.TrialState.FAIL)  # a trial fails: room for one more
    assert study.ask().number == second.number  # the queued trial is the one taken, no number is skipped


@pytest.mark.slow
def test_two_workers_share_one_study(home, cli):
    code, out, err = cli("search", "--trials", "6", "--workers", "2", *FAST)
    assert code == 0, err
    assert "6/6 finished trials, 6 run now" in out
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and len({t.number for t in study.trials}) == len(study.trials)
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "FAIL")]
    # (a trial that both workers asked for at once goes back to the queue as WAITING, claimed by no one)
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both workers ran trials
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == len(params)  # the two workers never drew the same trial
    parents, children = child_runs(f"sqlite:///{home}/mlruns/mlflow.db", "default")
    assert len(parents) == 1 and len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert children_of(os.getpid()) == []


@pytest.mark.slow
def test_two_commands_at_once_on_one_study_draw_different_trials(home):
    # the README's many-machines recipe on one machine: the same command twice, started together
    args = [sys.executable, "-m", "unet_opt", "search", "--trials", "4", "--pruner", "none", *FAST]
    commands = [subprocess.Popen(args, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(2)]
    outputs = [c.communicate(timeout=300)[0] for c in commands]
    assert [c.returncode for c in commands] == [0, 0], outputs
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(finished) >= 4 and len(set(params)) == len(params), params


def test_stop_workers_passes_the_stop_on_at_once_and_waits_once_in_all_not_once_per_worker():
    clock = [0.0]

    class Stubborn:  # a worker that ignores SIGINT: every join waits out its whole timeout
        pid = 0

        def join(self, timeout=None):
            clock[0] += timeout

        def is_alive(self):
            return True

    signals = []
    stop_workers([Stubborn() for _ in range(3)], wait=60.0, clock=lambda: clock[0],
                 send_signal=lambda pid, sig: signals.append((sig, clock[0])))
    assert clock[0] == 60.0 and signals == [(signal.SIGINT, 0.0)] * 3  # then the caller kills them


def test_a_worker_acts_on_its_first_stop_only():
    # a terminal's Ctrl-C reaches a worker and its launcher, which passes it on: two SIGINTs, one stop
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        runtime.handle_stop_signals(first_only=True)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        os.kill(os.getpid(), signal.SIGINT)  # while the first one's trial is being recorded: ignored
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert runtime.stop_signal == signal.SIGINT
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        runtime.stop_signal = None


@pytest.mark.slow
def test_sigint_to_the_launcher_stops_every_worker(home):
    # SIGINT to the launching process alone (not a terminal's Ctrl-C, which reaches all): it passes it on
    args = ["search", "--trials", "20", "--workers", "2", "--pruner", "none", *FAST,
            "--set", "space.epochs.high=100", "--set", "space.epochs.low=100",
            "--set", "train.patience=1000"]  # trials of ~10 s, not stopped early: SIGINT finds both running
    search = subprocess.Popen([sys.executable, "-m", "unet_opt", *args], cwd=home, preexec_fn=interruptible,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = f"sqlite:///{home}/studies/unet-opt.db"
    # about passing the stop on to workers that are training; a stop as a trial starts is tests/study/test_ledger.py's
    wait_until(lambda: both_workers_training(storage, search), timeout=180, every=0.5)
    search.send_signal(signal.SIGINT)
    try:  # the launcher passes the stop on and gives its workers 60 s before killing them
        out = search.communicate(timeout=180)[0]
    except subprocess.TimeoutExpired:
        search.kill()
        pytest.fail("the search was still running 180 s after SIGINT:\n" + search.communicate()[0][-4000:])
    assert search.returncode == 130, out
    trials = optuna.load_study(study_name="default", storage=storage).trials
    assert "interrupted" in out and len(trials) < 20, out
    assert not [t for t in trials if t.state.name == "RUNNING"], out
    failed = [t for t in trials if t.state.name == "FAIL"]  # the trials that were running, one per worker
    assert 1 <= len(failed) <= 2 and {t.user_attrs["fail_reason"] for t in failed} == {"interrupted"}, out
    _, children = child_runs(f"sqlite:///{home}/mlruns/mlflow.db", "default")
    opened = [t for t in failed if "mlflow_run_id" in t.user_attrs]  # a trial stopped as it began may have no run
    assert sorted(c.data.tags["optuna.trial"] for c in children if c.info.status == "KILLED") == \
        sorted(str(t.number) for t in opened), out
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}, out


@pytest.mark.slow
def test_sigint_to_the_launcher_while_its_workers_start_ends_them_at_once_and_says_nothing_false(home):
    # workers still importing when the stop comes are killed at once: the launcher said of each that it "did
    # not stop within 60 s of the stop", 0.7 s after it (found by an adversarial review)
    search = subprocess.Popen([sys.executable, "-m", "unet_opt", "search", "--trials", "4", "--workers", "2", *FAST],
                              cwd=home, preexec_fn=interruptible, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    wait_until(lambda: len(children_of(search.pid)) >= 2, timeout=120, every=0.05)  # spawned, still importing
    search.send_signal(signal.SIGINT)
    out = search.communicate(timeout=120)[0]
    assert search.returncode == 130 and "interrupted" in out and "did not stop" not in out, out
    assert children_of(search.pid) == [], out


@pytest.mark.slow
def test_a_worker_killed_between_its_two_stores_leaves_no_run_running(home, capfd):
    # killed (an OOM kill, a second stop) after its trial ended in Optuna and before the MLflow run did:
    # the launcher makes MLflow say what Optuna says before it returns, not the next command
    fit = partial(fits.end_in_optuna_only_then_die, f"sqlite:///{home}/studies/unet-opt.db", str(home / "done"))
    summary = run_search(home, 3, 'search.pruner="none"', fit=fit, workers=2)
    assert "worker exit codes" in summary.stopped_reason
    # and said as it happened, not only in the summary's exit codes (a review found no word of it before)
    assert "died (killed by SIGKILL): a trial it was running is closed as `worker died`" in capfd.readouterr().err
    trials = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db").trials
    dead = [t for t in trials if t.state.name == "FAIL"]
    assert [t.user_attrs["fail_reason"] for t in dead] == ["interrupted"]
    _, children = child_runs(f"sqlite:///{home}/mlruns/mlflow.db", "default")
    assert not [c for c in children if c.info.status == "RUNNING"]
    run = next(c for c in children if c.data.tags["optuna.trial"] == str(dead[0].number))
    assert run.info.status == "KILLED" and run.info.run_name.endswith("(interrupted)")


@pytest.mark.slow
def test_a_worker_that_does_not_stop_in_time_is_killed_and_its_trial_closed(home):
    # deaf to stops: the launcher waits STOP_WAIT (1 s here), says so, kills it and closes its trial
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              "import fits\nimport unet_opt.study.workers as workers\nworkers.STOP_WAIT = 1.0\n"
              "from conftest import run_search\nfrom pathlib import Path\n"
              "run_search(Path('.'), 4, 'search.pruner=\"none\"', 'space.epochs.high=100', 'space.epochs.low=100', "
              "'train.patience=1000', fit=fits.deaf_to_stops, workers=2)\n")
    search = subprocess.Popen([sys.executable, "-c", script], cwd=home, preexec_fn=interruptible,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = f"sqlite:///{home}/studies/unet-opt.db"

    wait_until(lambda: both_workers_training(storage, search), timeout=180, every=0.5)
    search.send_signal(signal.SIGINT)
    out = search.communicate(timeout=180)[0]
    assert out.count("did not stop within 1 s of the stop; killed") == 2, out
    trials = optuna.load_study(study_name="default", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"], out
    assert {t.user_attrs["fail_reason"] for t in trials} == {"worker died (killed or crashed)"}
    _, children = child_runs(f"sqlite:///{home}/mlruns/mlflow.db", "default")
    assert sorted(c.info.status for c in children) == ["FAILED", "FAILED"], out
    assert children_of(os.getpid()) == []


def test_what_a_data_folder_deserves_is_said_once_not_by_every_worker(home, capfd):
    from datasets import TABLE, make_dataset, write_table

    from unet_opt.core.data.classes import ClassTable

    make_dataset(home / "data", "generic", count=12)
    write_table(home / "data" / "classes.csv", ClassTable(("background", *TABLE.names[1:]), TABLE.colors))
    summary = run_search(home, 2, 'data.dataset="data"', f"data.num_classes={len(TABLE)}", 'search.pruner="none"',
                         "space.epochs.high=2", workers=2)
    assert summary.ran == 2 and not summary.stopped_reason
    said = [line for line in capfd.readouterr().err.splitlines() if "'background', is left out" in line]
    assert len(said) == 1 and not said[0].startswith("[w"), said  # found by a review of the warning: 3 times
