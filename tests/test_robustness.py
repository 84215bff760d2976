"""Fault injection: kills, divergence, out-of-memory, unreachable stores, hostile files; reproducibility."""

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import fits
import optuna
import pytest
import torch
from conftest import FAST, free_port, interruptible, processes_in, run_search, written_files
from mlflow.tracking import MlflowClient

from unet_opt.config.schema import to_toml
from unet_opt.config.space_file import load_config
from unet_opt.core.data import ClassTable
from unet_opt.core.model import build_model
from unet_opt.errors import UserError
from unet_opt.parallel.processes import worker_id
from unet_opt.runs.checkpoint import FORMAT, load_checkpoint

# where the first trial's process dies with SIGKILL: a stand-in fit from tests/fits.py
KILL_POINTS = {"before the first epoch": "die", "after the first epoch": "die_after_first_epoch",
               "while logging artifacts": "die_while_logging_artifacts"}


def load(home):
    return optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_the_same_command_recovers(home, cli, point):
    args = ["search", "--trials", "2", "--pruner", "none", *FAST]
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
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



# where a new study's setup is SIGKILLed: the module and function to patch, and the key at which it kills
SETUP_KILL_POINTS = {"as the study is created": ("unet_opt.study.storage", "store_setup", "creator"),
                     "after the study is created": ("unet_opt.study.storage", "store_setup", "config"),
                     "after its parent run is made": ("optuna", "Study.set_user_attr", "mlflow_parent_run_id"),
                     # a container restarted after an OOM kill: same host name, and the command gets the same pid
                     "by a process whose pid this one now has": ("unet_opt.study.storage", "store_setup", "config")}


@pytest.mark.parametrize("point", [pytest.param(point, marks=[pytest.mark.slow] if i % 2 else []) for i, point
                                   in enumerate(SETUP_KILL_POINTS)])  # half of them in the quick suite
def test_a_study_whose_setup_was_killed_is_set_up_by_the_same_command_at_once(home, cli, monkeypatch, point):
    """SIGKILL while a new study is being set up, by the command that created it. The same command does not
    wait for a setup that will never finish (it used to, for 30 s) and ends with one parent run: the one the
    killed command made in MLflow (before the run had its params) is taken up, not made a second time."""
    module, function, key = SETUP_KILL_POINTS[point]
    owner, _, name = f"{module}.{function}".rpartition(".")
    script = (f"import sys, os, signal; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
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


def test_an_interrupt_between_asking_and_claiming_a_trial_fails_it(home, cli, monkeypatch):
    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr("unet_opt.study.ledger.is_surplus", interrupted)
    code, _, err = cli("search", "--trials", "2", *FAST)
    assert code == 130, err
    [trial] = load(home).trials
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "interrupted"

def test_diverging_trials_are_recorded_as_nan_loss(home, cli):
    code, _, err = cli("search", "--trials", "2", *FAST, "--set", "space.lr.high=1e14", "--set", "space.lr.low=1e12")
    assert code == 0, err
    trials = load(home).trials
    # stopped at once, recorded with the reason, and the search went on to its 2 trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert {t.user_attrs["stop_reason"] for t in trials} == {"nan_loss"}
    assert all(t.user_attrs["epochs_run"] <= 1 for t in trials)  # stopped in the epoch it diverged in
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    assert client.get_run(trials[0].user_attrs["mlflow_run_id"]).data.tags["optuna.state_reason"] == "nan_loss"


def test_out_of_memory_fails_the_trial_with_its_batch_size(home, monkeypatch):
    freed = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(1))
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    run_search(home, 1, fit=partial(fits.fail_on_call, [], 1, oom))
    first, second = load(home).trials
    assert first.state.name == "FAIL" and second.state.name in ("COMPLETE", "PRUNED")
    assert first.user_attrs["fail_reason"] == f"out_of_memory at batch_size={first.params['train.batch_size']}"
    assert freed  # the allocator's cache was released before the next trial


@pytest.mark.parametrize("flag, url", [
    ("--tracking-uri", "http://mlflow-user:s3cret@127.0.0.1:9"),
    ("--storage", "postgresql://optuna:s3cret@127.0.0.1:9/optuna"),
])
def test_unreachable_store_is_one_line_without_the_password(home, cli, flag, url):
    code, out, err = cli("search", flag, url, *FAST)
    assert code == 2 and err.startswith("error: cannot ") and len(err.strip().splitlines()) == 1, err
    assert "s3cret" not in out + err and ":***@" in err
    assert written_files(home) == []  # checked before any training, nothing written


def test_ui_binds_localhost_unless_told(home, cli):
    from unet_opt.cli.app import ui
    from unet_opt.tracking.ui import serve_ui

    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    assert next(p for p in ui.params if p.name == "host").default == "127.0.0.1"
    commands = []

    class Server:
        def wait(self):
            return 0

    def start(command, env, start_new_session):
        commands.append(command)
        return Server()

    port = free_port("0.0.0.0")
    assert serve_ui(f"sqlite:///{home}/mlruns/mlflow.db", home / "mlruns" / "artifacts", "0.0.0.0", port, start=start) == 0
    assert commands[0][commands[0].index("--host") + 1] == "0.0.0.0" and str(port) in commands[0]


def test_ui_prints_each_study_s_runs_table_ranked_once_its_checks_pass(searched_home):
    from mlflow.tracking import MlflowClient

    from unet_opt.tracking.ui import serve_ui

    uri = f"sqlite:///{searched_home}/mlruns/mlflow.db"
    experiment = MlflowClient(uri).get_experiment_by_name("unet-opt-default")
    port = free_port()
    lines = []
    started = serve_ui(uri, searched_home / "mlruns" / "artifacts", "127.0.0.1", port, lines.append,
                       start=lambda *args, **kwargs: SimpleNamespace(wait=lambda: 0))
    assert started == 0 and lines[0] == f"MLflow UI on http://127.0.0.1:{port}  (Ctrl-C stops it)"
    assert lines[1:] == [f"  study 'default', trials ranked: http://127.0.0.1:{port}/#/experiments/"
                         f"{experiment.experiment_id}/runs?viewStateShareKey=unet-opt-ranked&workflowType=machine_learning"]
    # a study of an earlier version: no saved view, and an experiment named after the study alone
    client = MlflowClient(uri)
    client.delete_experiment_tag(experiment.experiment_id, "mlflow.sharedViewState.unet-opt-ranked")
    client.rename_experiment(experiment.experiment_id, "default")
    lines.clear()
    serve_ui(uri, searched_home / "mlruns" / "artifacts", "127.0.0.1", port, lines.append,
             start=lambda *args, **kwargs: SimpleNamespace(wait=lambda: 0))
    assert lines[1:] == [f"  study 'default', trials ranked: http://127.0.0.1:{port}/#/experiments/"
                         f"{experiment.experiment_id}/runs?orderByKey=metrics.%60best_val_dice%60&orderByAsc=false"]


def test_ui_on_a_busy_port_is_an_error(home, cli):
    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = cli("ui", "--port", str(busy.getsockname()[1]))
    assert code == 2 and "is in use (another `unet-opt ui`?); pass another --port" in err


def test_ui_on_an_address_not_of_this_machine_is_an_error_naming_the_address(home, cli):
    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    code, out, err = cli("ui", "--host", "192.0.2.1", "--port", str(free_port()))  # TEST-NET-1: never local
    assert code == 2 and "cannot listen on 192.0.2.1:" in err and "in use" not in err and out == ""


def test_ui_passes_allowed_hosts_to_the_mlflow_server(home):
    from unet_opt.tracking.ui import serve_ui

    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    commands = []

    def start(command, env, start_new_session):
        commands.append(command)
        return SimpleNamespace(wait=lambda: 0)

    for allowed in ("", "tracker.lab:5000"):
        serve_ui(f"sqlite:///{home}/mlruns/mlflow.db", home / "mlruns" / "artifacts", "0.0.0.0", free_port("0.0.0.0"),
                 lambda line: None, start=start, allowed_hosts=allowed)
    assert "--allowed-hosts" not in commands[0]  # MLflow's own default: localhost and private addresses
    assert commands[1][commands[1].index("--allowed-hosts") + 1] == "tracker.lab:5000"


@pytest.mark.slow
def test_sigterm_to_ui_stops_the_mlflow_server(searched_home):
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "unet_opt", "ui", "--port", str(port)], cwd=searched_home,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        ui.kill()
        pytest.fail("the UI did not start")
    ui.send_signal(signal.SIGTERM)
    assert ui.wait(60) == 143
    time.sleep(1)
    with pytest.raises(OSError):  # nothing answers any more: the server and its workers are gone
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


class Payload:
    """Anything that needs pickle to load: refused by weights_only=True."""


def test_checkpoints_load_weights_only(tmp_path):
    torch.save({"format": FORMAT, "state_dict": {}, "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="is not a unet-opt checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.parametrize("damage", ["empty state_dict", "missing keys", "missing config", "wrong shapes"])
def test_crafted_checkpoints_are_one_error_line(home, cli, damage):
    cfg = load_config("default")
    model = build_model(cfg.model, 24)
    raw = {"format": FORMAT, "state_dict": model.state_dict(), "config_toml": to_toml(cfg),
           "class_names": list(ClassTable.drone().names), "class_colors": [list(c) for c in ClassTable.drone().colors],
           "binary": False, "split": {"train": [], "val": [], "test": []}}
    if damage == "empty state_dict":
        raw["state_dict"] = {}
    elif damage == "missing keys":
        raw["state_dict"] = dict(list(raw["state_dict"].items())[:3])
    elif damage == "missing config":
        del raw["config_toml"]
    else:
        raw["class_names"] = raw["class_names"][:5]  # 5 output channels in the weights' place of 24
        raw["class_colors"] = raw["class_colors"][:5]
    torch.save(raw, home / "crafted.pt")
    code, out, err = cli("evaluate", "crafted.pt")
    assert code == 2 and err.startswith("error: crafted.pt is a damaged unet-opt checkpoint") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_same_seed_same_params_and_values(home, monkeypatch, cli):
    results = []
    for folder in ("a", "b"):
        (home / folder).mkdir()
        monkeypatch.chdir(home / folder)
        assert cli("search", "--trials", "3", "--seed", "7", "--pruner", "none", *FAST)[0] == 0
        folder = home / folder  # absolute URIs: MLflow caches one store per URI string
        study = optuna.load_study(study_name="default", storage=f"sqlite:///{folder}/studies/unet-opt.db")
        results.append([(t.params, t.value) for t in study.trials])
        run = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db").get_run(study.trials[0].user_attrs["mlflow_run_id"])
        assert run.data.tags["sampler_seed"] == "7" and run.data.tags["seed"] == "0"  # seeds are tagged
    # the same sampled params and the same trial values, to the last bit
    assert results[0] == results[1]


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


@pytest.mark.parametrize("case", [pytest.param(case, marks=[pytest.mark.slow] if "workers" in case else [])
                                  for case in DROPPED_STOPS])
def test_a_stop_signal_that_lands_in_a_finalizer_still_stops_the_search(tmp_path, case):
    """Python drops an exception raised inside a `__del__` or a weakref callback ("Exception ignored in ...").
    A Ctrl-C that landed there during the start (seen in a WeakKeyDictionary callback at 4 s) used to be lost,
    and the search ran to its end. Here the signal is sent from inside a finalizer as the search's process
    sets up its stores, or as it starts its workers (which the signal, sent to it alone, does not reach)."""
    sig, where, options = DROPPED_STOPS[case]
    script = command_dropping_a_stop(sig, "unet_opt.study.search", where, ["search", "--trials", "2", *FAST, *options])
    home = tmp_path / "project"  # not the test's working folder: no process is to be left in it
    home.mkdir()
    proc = subprocess.run([sys.executable, "-c", script], cwd=home, capture_output=True, text=True, timeout=300)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not [t for t in load(home).trials if t.state.name in ("COMPLETE", "PRUNED")], proc.stderr
    assert processes_in(home) == []


def test_a_stop_that_no_safe_point_raises_again_still_ends_the_command_as_stopped(searched_home):
    """A Ctrl-C dropped in a finalizer where no safe point follows (`studies` has none) used to end the
    command with exit 0 and nothing said; with Python's "Exception ignored" hidden, it would vanish."""
    script = command_dropping_a_stop(signal.SIGINT, "unet_opt.study.summary", "list_studies", ["studies"])
    proc = subprocess.run([sys.executable, "-c", script], cwd=searched_home, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 130 and proc.stderr.strip().splitlines()[-1] == "interrupted", proc.stderr


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


@pytest.mark.slow
def test_tracking_store_dropping_mid_trial_is_recorded(home, cli, monkeypatch):
    from unet_opt.tracking.tracker import Tracker

    real, calls = Tracker.log_metrics, []

    def flaky(self, run_id, metrics, step):
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("tracking server went away")
        return real(self, run_id, metrics, step)

    monkeypatch.setattr(Tracker, "log_metrics", flaky)
    code, _, err = cli("search", "--trials", "2", "--pruner", "none", *FAST)
    assert code == 0, err
    trials = load(home).trials
    # the trial in progress is recorded FAIL with the tracking error; the search goes on
    assert [t.state.name for t in trials].count("FAIL") == 1
    assert next(t for t in trials if t.state.name == "FAIL").user_attrs["fail_reason"] == \
        "ConnectionError: tracking server went away"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2


@pytest.mark.parametrize("store", ["studies/unet-opt.db", "mlruns/mlflow.db"])
def test_a_damaged_store_is_named_with_the_way_out(home, cli, store):
    (home / store).parent.mkdir()
    (home / store).write_bytes(b"this is not a database" * 100)
    code, _, err = cli("search", "--trials", "1", *FAST)
    # not "start the server": the file, that it is damaged, and what to do
    assert code == 2 and f"{home / store} is damaged or unreadable" in err and "move it away" in err, err
    assert "server" not in err and len(err.strip().splitlines()) == 1


def test_a_store_of_the_other_kind_is_refused_and_left_as_it_was(searched_home, cli):
    mlflow_db, study_db = searched_home / "mlruns" / "mlflow.db", searched_home / "studies" / "unet-opt.db"
    before = mlflow_db.read_bytes(), study_db.read_bytes()
    code, _, err = cli("report", "--storage", f"sqlite:///{mlflow_db}")
    assert code == 2 and "is not an Optuna study storage" in err and "--storage" in err, err
    code, _, err = cli("search", "--tracking-uri", f"sqlite:///{study_db}", *FAST)
    assert code == 2 and "is not an MLflow store" in err and "--tracking-uri" in err, err
    assert (mlflow_db.read_bytes(), study_db.read_bytes()) == before  # no tables added to either


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
