"""One trial over several processes (DDP over gloo): the same numbers as one process, failures and kills."""

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import fits
import optuna
import pytest
from conftest import FAST, children_of, run_search, wait_until
from mlflow.tracking import MlflowClient

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
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              "from functools import partial\nfrom pathlib import Path\nimport fits\nfrom conftest import run_search\n"
              f"run_search(Path('.'), 1, *{EXACT_SETS!r}, fit=partial(fits.note_pid_and_train, {str(pids)!r}), "
              "procs=2)\n")
    search = subprocess.Popen([sys.executable, "-c", script], cwd=home,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    args = ["search", "--trials", "1", "--procs", "2", *EXACT]
    wait_until(lambda: len(list(pids.iterdir())) == 2 or search.poll() is not None, timeout=120, every=0.1)
    ranks = [int(p.name) for p in pids.iterdir()]
    assert len(ranks) == 2, "the ranks never started training"
    search.kill()
    search.wait()

    def alive() -> list[int]:  # the kernel sends the ranks their parent-death signal as the search dies
        return [pid for pid in ranks if Path(f"/proc/{pid}").exists()
                and (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")]

    assert wait_until(lambda: not alive(), timeout=30), alive()
    code, _, err = cli(*args)  # and the same command recovers, as after any kill
    assert code == 0, err
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]


@pytest.mark.slow
def test_retrain_on_two_gloo_processes_matches_one_process(home, cli, monkeypatch):
    """`retrain --best --procs 2` trains the same model as one process: the same global batches, so the
    per-epoch losses and the test scores agree up to the order of floating-point sums (as for a trial)."""
    from unet_opt.runs import runner

    tested_at = []  # the batch the test is scored at, in the launching process beside the ranks: one rank's share
    split_metrics = runner.split_metrics
    monkeypatch.setattr(runner, "split_metrics", lambda model, data, indices, cfg, *rest:
                        tested_at.append(cfg.batch_size) or split_metrics(model, data, indices, cfg, *rest))
    assert cli("search", "--trials", "1", *EXACT)[0] == 0
    assert cli("retrain", "--best", "--device", "cpu", "--name", "one")[0] == 0
    code, out, err = cli("retrain", "--best", "--device", "cpu", "--procs", "2", "--name", "two")
    assert code == 0, err
    batch = int(optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
                .best_trial.params["train.batch_size"])
    assert tested_at == [batch, batch // 2]
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
