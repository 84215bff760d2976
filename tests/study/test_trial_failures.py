"""Trials that diverge, run out of memory or lose their tracking store; trials reproduced by their seed."""

from functools import partial

import fits
import optuna
import pytest
import torch
from conftest import FAST, run_search
from mlflow.tracking import MlflowClient


def load(home):
    return optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_a_trial_logs_its_learning_rate_when_it_changes(home, schedule):
    from conftest import run_search
    from mlflow.tracking import MlflowClient

    run_search(home, 1, 'search.pruner="none"', f'train.schedule="{schedule}"', "space.epochs.low=3",
               "space.epochs.high=3", "train.warmup_epochs=1")
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    [run] = [r for r in client.search_runs([client.get_experiment_by_name("unet-opt-default").experiment_id])
             if r.data.tags.get("unet_opt.role") != "study"]
    rates = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
    lr = float(run.data.params["train.lr"])
    assert run.data.params["train.schedule"] == schedule
    if schedule == "constant":  # after the warm-up's first epoch, constant: logged twice, not every epoch
        assert len(rates) == 2 and rates[0] <= lr / 2 and rates[1] == pytest.approx(lr)
    else:  # warm-up, the top, then down: one value per epoch
        assert len(rates) == 3 and rates[0] <= lr / 2 and rates[1] == pytest.approx(lr, rel=0.05) and rates[2] < lr


@pytest.mark.slow
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


@pytest.mark.slow
def test_out_of_memory_fails_the_trial_with_its_batch_size(home, monkeypatch):
    freed = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(1))
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    run_search(home, 1, fit=partial(fits.fail_on_call, [], 1, oom))
    first, second = load(home).trials
    assert first.state.name == "FAIL" and second.state.name in ("COMPLETE", "PRUNED")
    assert first.user_attrs["fail_reason"] == f"out_of_memory at batch_size={first.params['train.batch_size']}"
    assert freed  # the allocator's cache was released before the next trial


@pytest.mark.slow
def test_out_of_memory_on_rank_processes_reads_as_it_does_in_one_process(home):
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    run_search(home, 1, fit=partial(fits.always_fail, oom), procs=2)
    trial = load(home).trials[0]  # (a failed trial is replaced: all of them fail here)
    assert trial.state.name == "FAIL"  # not "RankFailed: rank 0 failed: torch.OutOfMemoryError: ..."
    assert trial.user_attrs["fail_reason"] == f"out_of_memory at batch_size={trial.params['train.batch_size']}"


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
