"""Scale-out: one trial over several processes (DDP over gloo), several workers on one study, and
several machines sharing a PostgreSQL study and an MLflow server."""

import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from functools import partial
from pathlib import Path

import fits
import optuna
import pytest
import sqlalchemy
import torch
from conftest import FAST, children_of, interruptible, run_search
from mlflow.tracking import MlflowClient

from unet_opt.config.schema import DataConfig
from unet_opt.core.data import batches, load_data
from unet_opt.errors import UserError
from unet_opt.parallel.placement import Placement, check_divisible
from unet_opt.study.ledger import is_surplus
from unet_opt.study.storage import open_storage
from unet_opt.study.workers import stop_workers
from unet_opt.tracking.tracker import Tracker

# one image size and a fixed epoch count: trials of two runs are comparable epoch by epoch
EXACT_SETS = ["space.epochs.low=3", "space.epochs.high=3", 'data.augment="crop"', 'search.pruner="none"']
EXACT = [*FAST, *(arg for item in EXACT_SETS for arg in ("--set", item)), "--device", "cpu"]


def child_runs(tracking_uri: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(f"unet-opt-{experiment}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("unet_opt.role") == "study"]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_shards_of_a_global_batch_are_what_one_process_sees():
    # 2 ranks, crop augmentation: rank slices of each global batch, put together, are pixel-exact
    data = load_data(DataConfig(synthetic_images=24, image_size=32, augment="crop"), 3)
    indices = list(range(20))

    def run(shard):
        return list(batches(data, indices, 8, shuffle=True, augment="crop", drop_last=True, shard=shard,
                            generator=torch.Generator().manual_seed(5)))

    whole = run((0, 1))
    parts = [run((rank, 2)) for rank in range(2)]
    assert len(whole) == 2 and all(len(p) == 2 for p in parts)
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][step][0], parts[1][step][0]]), x)
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), y)


def test_gpu_groups_for_workers_and_batch_splits():
    four = Placement("cuda", 4, (0, 1, 2, 3))
    assert [w.gpu_ids for w in four.split(2)] == [(0, 1), (2, 3)] and four.split(2)[0].procs == 2
    with pytest.raises(UserError, match="--workers 3 cannot share 4 GPU"):
        four.split(3)
    check_divisible([4, 8, 12], 4)
    with pytest.raises(UserError, match="train.batch_size = 4 cannot be split evenly over 8 processes"):
        check_divisible([4, 8], 8)


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


def open_at_once(open_store, barrier, results) -> None:
    barrier.wait()
    try:
        open_store()
        results.put("ok")
    except Exception as e:
        results.put(f"{type(e).__name__}: {e}")


def open_together(open_store, processes: int = 3) -> list[str]:
    """`open_store()` in several processes at the same moment: `--workers`, a second terminal or
    `unet-opt status` all open the stores, and on new databases each one creates the tables."""
    context = multiprocessing.get_context("fork")  # opening a store needs no torch: fork is safe and fast
    barrier, results = context.Barrier(processes), context.Queue()
    started = [context.Process(target=open_at_once, args=(open_store, barrier, results)) for _ in range(processes)]
    for p in started:
        p.start()
    outcomes = [results.get(timeout=120) for _ in started]
    for p in started:
        p.join(30)
    return outcomes


@pytest.mark.slow
def test_processes_opening_one_new_study_database_at_once_all_open_it(tmp_path):
    for round_ in range(4):  # the slower ones used to fail with "table studies already exists"
        assert open_together(lambda: open_storage(f"sqlite:///{tmp_path}/{round_}.db")) == ["ok"] * 3


@pytest.mark.slow
def test_processes_opening_one_new_mlflow_database_at_once_all_open_it_and_leave_it_sound(tmp_path):
    for round_ in range(3):  # racing migrations used to fail and could leave the database unusable for good
        uri, artifacts = f"sqlite:///{tmp_path}/{round_}/mlflow.db", tmp_path / str(round_) / "artifacts"
        assert open_together(lambda: Tracker(uri, "default", artifacts)) == ["ok"] * 3
        tracker = Tracker(uri, "default", artifacts)
        run = tracker.client.create_run(tracker.experiment_id)
        tracker.client.log_metric(run.info.run_id, "val_dice", 0.5, step=1)


def failing_once(error: Exception):
    calls = []

    def storage(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise error
        return "storage"

    return storage, calls


def test_a_table_created_by_another_process_meanwhile_is_retried_other_errors_are_not(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    url = "postgresql://optuna@127.0.0.1:9/optuna"  # a new SQLite file is built aside, alone: servers race
    raced = sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
    storage, calls = failing_once(raced)
    monkeypatch.setattr(optuna.storages, "RDBStorage", storage)
    assert open_storage(url) == "storage" and len(calls) == 2

    unreadable = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("unable to open database file"))
    storage, calls = failing_once(unreadable)
    monkeypatch.setattr(optuna.storages, "RDBStorage", storage)
    with pytest.raises(UserError, match="unable to open database file.*check --storage"):
        open_storage(url)
    assert len(calls) == 1  # a real error is reported at once, not retried


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [[], ['train.loss="ce+dice"', 'train.class_weights="inverse"', 'train.schedule="poly"',
                                         "train.grad_clip=1.0", "data.eval_size=64"],
                                    ['train.loss="focal"', 'train.optimizer="sgd"']],
                         ids=["ce", "ce+dice, weighted, poly, clipped, scored at 64 px", "focal, sgd"])
def test_two_gloo_processes_train_a_trial_as_one_process_does(home, cli, recipe):
    """The same trial (same sampled params, seed, data and global batch) on 1 and on 2 processes.

    Tolerance: every rank sees exactly the images one process sees in each step (same shuffling, same
    per-image augmentation, BatchNorm statistics over the global batch, gradients averaged), so the only
    difference is the order of floating-point sums (all-reduce, per-rank BatchNorm sums). Losses agree to
    1e-3 relative; a score can move when a few border pixels flip, so scores agree to 0.01 absolute
    (measured: losses within 3e-5, dice within 3e-4 after 4 epochs).
    """
    sets = [arg for item in recipe for arg in ("--set", item)]  # the losses sum over the global batch
    assert cli("search", "--trials", "1", "--study", "one", *EXACT, *sets)[0] == 0
    code, _, err = cli("search", "--trials", "1", "--study", "two", "--procs", "2", *EXACT, *sets)
    assert code == 0, err
    uri = f"sqlite:///{home}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    storage = f"sqlite:///{home}/studies/unet-opt.db"
    trials = {name: optuna.load_study(study_name=name, storage=storage).trials for name in ("one", "two")}
    assert trials["one"][0].params == trials["two"][0].params and trials["two"][0].state.name == "COMPLETE"
    runs = {}
    for name in ("one", "two"):
        parents, children = child_runs(uri, name)
        assert len(parents) == 1 and len(children) == 1  # one run per trial, not one per rank
        runs[name] = children[0]
    assert runs["two"].data.tags["processes"] == "2" and runs["one"].data.tags["processes"] == "1"
    for key in ("train_loss", "val_loss", "val_dice", "val_f1_macro", "val_miou", "val_pixel_accuracy"):
        one, two = (history(client, runs[n].info.run_id, key) for n in ("one", "two"))
        assert [s for s, _ in two] == [1, 2, 3]  # one value per epoch, logged once
        for (_, a), (_, b) in zip(one, two):
            if key.endswith("loss"):
                assert b == pytest.approx(a, rel=1e-3), key
            else:
                assert b == pytest.approx(a, abs=0.01), key


@pytest.mark.slow
def test_a_rank_that_raises_fails_the_trial_and_leaves_no_process(home, tmp_path_factory):
    mark = tmp_path_factory.mktemp("mark") / "fired"  # rank 1 of the first trial raises, once
    run_search(home, 2, *EXACT_SETS, fit=partial(fits.fail_rank_once, str(mark)), procs=2)
    assert mark.exists()
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]  # the search went on and replaced the failed trial
    assert study.trials[0].user_attrs["fail_reason"].endswith("rank 1 failed: RuntimeError: rank 1 broke mid-epoch")
    _, children = child_runs(f"sqlite:///{home}/mlruns/mlflow.db", "default")
    failed = next(c for c in children if c.data.tags["optuna.trial"] == "0")
    assert failed.info.status == "FAILED" and "rank 1 broke mid-epoch" in failed.data.tags["optuna.state_reason"]
    assert children_of(os.getpid()) == []  # no rank outlived its trial


@pytest.mark.slow
def test_killing_the_search_kills_its_ranks(home, cli, tmp_path_factory):
    # each rank notes its pid once it trains; the search process is then killed with SIGKILL
    pids = tmp_path_factory.mktemp("pids")
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from functools import partial\nfrom pathlib import Path\nimport fits\nfrom conftest import run_search\n"
              f"run_search(Path('.'), 1, *{EXACT_SETS!r}, fit=partial(fits.note_pid_and_train, {str(pids)!r}), "
              "procs=2)\n")
    search = subprocess.Popen([sys.executable, "-c", script], cwd=home,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    args = ["search", "--trials", "1", "--procs", "2", *EXACT]
    deadline = time.monotonic() + 120
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline and search.poll() is None:
        time.sleep(0.1)
    ranks = [int(p.name) for p in pids.iterdir()]
    assert len(ranks) == 2, "the ranks never started training"
    search.kill()
    search.wait()
    time.sleep(3)  # the kernel delivers the ranks' parent-death signal at once; allow for scheduling
    alive = [pid for pid in ranks if Path(f"/proc/{pid}").exists()
             and (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")]
    assert alive == []
    code, _, err = cli(*args)  # and the same command recovers, as after any kill
    assert code == 0, err
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]


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


def test_stop_workers_waits_grace_and_nudge_once_in_all_not_once_per_worker():
    clock = [0.0]

    class Stubborn:  # a worker that ignores SIGINT: every join waits out its whole timeout
        pid = 0

        def join(self, timeout=None):
            clock[0] += timeout

        def is_alive(self):
            return True

    signals = []
    stop_workers([Stubborn() for _ in range(3)], grace=5.0, after_nudge=60.0, clock=lambda: clock[0],
                 send_signal=lambda pid, sig: signals.append(sig))
    assert clock[0] == 65.0 and signals == [signal.SIGINT] * 3  # then the caller kills them


@pytest.mark.slow
def test_sigint_to_the_launcher_stops_every_worker(home):
    # SIGINT to the launching process alone (not a terminal's Ctrl-C, which reaches all): it passes it on
    args = ["search", "--trials", "20", "--workers", "2", "--pruner", "none", *FAST,
            "--set", "space.epochs.high=100", "--set", "space.epochs.low=100",
            "--set", "train.patience=1000"]  # trials of ~10 s, not stopped early: SIGINT finds both running
    search = subprocess.Popen([sys.executable, "-m", "unet_opt", *args], cwd=home, preexec_fn=interruptible,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = f"sqlite:///{home}/studies/unet-opt.db"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and search.poll() is None:
        try:
            study = optuna.load_study(study_name="default", storage=storage)
            trials = study.get_trials(deepcopy=False)
            if len(trials) >= 2 and any(t.state.name == "RUNNING" for t in trials):  # both workers are up
                break
        except Exception:  # the storage or the study is not there yet
            pass
        time.sleep(0.5)
    search.send_signal(signal.SIGINT)
    try:  # the launcher gives its workers 5 + 60 s before killing them, then records the study
        out = search.communicate(timeout=180)[0]
    except subprocess.TimeoutExpired:
        search.kill()
        pytest.fail("the search was still running 180 s after SIGINT:\n" + search.communicate()[0][-4000:])
    assert search.returncode == 130, out
    trials = optuna.load_study(study_name="default", storage=storage).trials
    assert "interrupted" in out and len(trials) < 20
    assert not [t for t in trials if t.state.name == "RUNNING"]
    failed = [t for t in trials if t.state.name == "FAIL"]  # the trials that were running, one per worker
    assert 1 <= len(failed) <= 2 and {t.user_attrs["fail_reason"] for t in failed} == {"interrupted"}
    _, children = child_runs(f"sqlite:///{home}/mlruns/mlflow.db", "default")
    assert sorted(c.data.tags["optuna.trial"] for c in children if c.info.status == "KILLED") == \
        sorted(str(t.number) for t in failed)
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}


# ---------------------------------------------------------------------------------------------
# Many machines: PostgreSQL storage and an MLflow tracking server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A fresh database on the server named by UNET_OPT_TEST_POSTGRES (which .ci/run starts), dropped after."""
    server = os.environ.get("UNET_OPT_TEST_POSTGRES")
    if not server:
        pytest.skip("UNET_OPT_TEST_POSTGRES is not set (.ci/run starts a PostgreSQL server and sets it)")
    import psycopg

    name = f"unet_opt_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        yield server.rsplit("/", 1)[0] + "/" + name
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts"),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the MLflow server did not start")
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(30)


@pytest.fixture
def mlflow_server_folder(mlflow_server, tmp_path_factory) -> Path:
    """The folder behind `mlflow_server`: its database and its artifacts."""
    return next(p for p in tmp_path_factory.getbasetemp().glob("mlflow-server*") if (p / "mlflow.db").exists())


@pytest.mark.slow
def test_two_machines_share_a_postgres_study_and_an_mlflow_server(postgres_url, mlflow_server, tmp_path):
    # two "machines": separate project folders (caches), one study in PostgreSQL, one tracking server
    args = ["search", "--trials", "6", "--study", "shared", "--storage", postgres_url,
            "--tracking-uri", mlflow_server, *FAST]
    machines = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        machines.append(subprocess.Popen([sys.executable, "-m", "unet_opt", *args], cwd=tmp_path / name,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs
    # each machine counts only its own trials
    assert sum(int(re.search(r"(\d+) run now", out).group(1)) for out in outputs) == 6, outputs
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and not [t for t in study.trials if t.state.name != "COMPLETE" and
                                       t.state.name != "PRUNED"]
    assert len({t.user_attrs["worker"].rsplit(":", 1)[1] for t in study.trials}) == 2  # both machines worked
    parents, children = child_runs(mlflow_server, "shared")
    assert len(parents) == 1  # the machines agreed on one parent run
    run_ids = sorted(c.info.run_id for c in children)
    assert run_ids == sorted(t.user_attrs["mlflow_run_id"] for t in study.trials)  # each trial recorded once
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    artifacts = MlflowClient(mlflow_server).list_artifacts(children[0].info.run_id)
    assert "learning_curves.png" in {a.path for a in artifacts}  # files went through the server
    assert not list((tmp_path / "a").glob("mlruns/*"))  # nothing tracked locally


@pytest.mark.slow
def test_retrain_on_two_gloo_processes_matches_one_process(home, cli):
    """`retrain --best --procs 2` trains the same model as one process: the same global batches, so the
    per-epoch losses and the test scores agree up to the order of floating-point sums (as for a trial)."""
    assert cli("search", "--trials", "1", *EXACT)[0] == 0
    assert cli("retrain", "--best", "--device", "cpu", "--name", "one")[0] == 0
    code, out, err = cli("retrain", "--best", "--device", "cpu", "--procs", "2", "--name", "two")
    assert code == 0, err
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    runs = {r.data.tags["registered_model"].split("/")[0]: r for r in client.search_runs(
        [client.get_experiment_by_name("unet-opt-default").experiment_id], "tags.`unet_opt.role` = 'retrain'")}
    assert runs["two"].data.tags["devices"] == "2 CPU processes" and runs["one"].data.tags["devices"] == "1 CPU process"
    one, two = (history(client, runs[n].info.run_id, "train_loss") for n in ("one", "two"))
    assert [s for s, _ in two] == [s for s, _ in one] and len(one) >= 1  # every epoch logged once
    for (_, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-3)
    for key in ("test_loss", "test_dice", "test_miou", "test_pixel_accuracy"):
        a, b = runs["one"].data.metrics[key], runs["two"].data.metrics[key]
        assert b == pytest.approx(a, rel=1e-3) if key == "test_loss" else b == pytest.approx(a, abs=0.01), key
    assert children_of(os.getpid()) == []  # no rank outlived the retrain


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_never_leaves_the_process(mlflow_server, mlflow_server_folder, tmp_path):
    secret = "Pl4ntedS3cret"
    tracking = mlflow_server.replace("http://", f"http://someone:{secret}@")  # the server ignores it
    outputs = []
    for args in (["search", "--trials", "2", "--tracking-uri", tracking, *FAST], ["report"], ["studies"],
                 ["search", "--trials", "2", "--tracking-uri", tracking, *FAST]):
        run = subprocess.run([sys.executable, "-m", "unet_opt", *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        outputs.append(run.stdout + run.stderr)
    assert "someone:***@" in outputs[0]  # the URL is shown, its password is not
    assert secret not in "".join(outputs)
    # nor in any file: the study storage, the server's database and every artifact the runs logged
    files = [p for folder in (tmp_path, mlflow_server_folder) for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 10 and not [p for p in files if secret.encode() in p.read_bytes()]
