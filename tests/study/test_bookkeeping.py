"""What a trial's epochs cost the stores: few Optuna and MLflow calls per epoch, counted."""

import collections
import functools

import optuna
import pytest
from conftest import run_search
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
