"""`fit`: the epoch loop, its callback, early stopping, divergence and determinism."""

import math

import pytest

from unet_opt.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.core.data import load_data, make_split, split_indices
from unet_opt.core.scoring import loss_and_matrix
from unet_opt.core.train import fit


@pytest.fixture(scope="module")
def tiny():
    data = load_data(DataConfig(image_size=32, synthetic_images=24), depth=2)
    return data, split_indices(make_split(data.names, 0.2, 0.2, 0), data.names)


MODEL = ModelConfig(base_channels=4, depth=2)


def config(**train) -> Config:
    return Config(data=DataConfig(augment="none"), model=MODEL, train=TrainConfig(**train))


def test_fit_calls_back_every_epoch_and_keeps_the_best_epoch(tiny):
    data, split = tiny
    seen = []
    result = fit(config(lr=0.01, batch_size=4, epochs=3, patience=10), data, split,
                 on_epoch=lambda epoch, m, best: seen.append((epoch, m["val_dice"], best)) and False)
    assert [e for e, _, _ in seen] == [1, 2, 3] and result.stop_reason == "max_epochs"
    # the callback is handed the run's best value so far, epoch by epoch
    assert [b for _, _, b in seen] == [max(v for _, v, _ in seen[:i + 1]) for i in range(3)]
    best = max(seen, key=lambda s: s[1])
    # the result holds the best epoch, whose weights reproduce its score
    assert result.best_epoch == best[0] and result.best_metrics["val_dice"] == best[1]
    _, matrix = loss_and_matrix(result.model, data, split["val"], 4)
    assert (matrix == result.confusion).all()
    assert set(result.history[0]) >= {"train_loss", "val_loss", "val_dice", "val_f1_macro", "val_miou",
                                      "val_pixel_accuracy", "lr", "epoch_seconds", "images_per_second"}


def test_callback_can_stop_training(tiny):
    data, split = tiny
    result = fit(config(batch_size=4, epochs=5), data, split, on_epoch=lambda e, m, best: e == 2)
    assert result.epochs_run == 2 and result.stop_reason == "callback"


def test_a_stop_asked_after_the_last_epoch_leaves_the_fit_complete(tiny):
    # pruning a trial after its last epoch would save no work and throw its result away
    data, split = tiny
    result = fit(config(batch_size=4, epochs=2), data, split, on_epoch=lambda e, m, best: e == 2)
    assert result.epochs_run == 2 and result.stop_reason == "max_epochs"


def test_early_stopping_after_patience_epochs_without_progress(tiny):
    data, split = tiny
    # lr = 1e-9 cannot improve the metric after the first epoch
    result = fit(config(lr=1e-9, batch_size=4, epochs=6, patience=2), data, split)
    assert result.stop_reason == "early_stopping" and result.epochs_run < 6
    assert result.epochs_run - result.best_epoch == 2


def test_diverging_loss_stops_the_fit(tiny):
    data, split = tiny
    result = fit(config(lr=1e12, batch_size=4, epochs=5), data, split)
    assert result.stop_reason == "nan_loss" and result.epochs_run <= 1


def test_same_seed_same_result(tiny):
    data, split = tiny
    a = fit(config(batch_size=4, epochs=2, seed=3), data, split)
    b = fit(config(batch_size=4, epochs=2, seed=3), data, split)
    assert a.history[-1]["val_loss"] == b.history[-1]["val_loss"]
    assert not math.isnan(a.history[-1]["val_loss"])


def test_a_validation_loss_that_overflows_stops_the_fit_as_diverged(tiny, monkeypatch):
    # a model can overflow on val while its training loss still reads finite (SGD at lr 1e8): it has diverged,
    # and is stopped as a NaN training loss is, whatever metric is searched (val_loss had no value to score)
    from unet_opt.core import train

    scored = train.split_metrics

    def overflowing_after_epoch_1(*args, **kwargs):
        scores, matrix = scored(*args, **kwargs)
        calls.append(1)
        return {**scores, "val_loss": scores["val_loss"] if len(calls) == 1 else float("nan")}, matrix

    calls, seen = [], []
    monkeypatch.setattr(train, "split_metrics", overflowing_after_epoch_1)
    result = fit(config(lr=0.01, batch_size=4, epochs=4), data=tiny[0], split=tiny[1],
                 on_epoch=lambda epoch, m, best: seen.append(epoch) and False)
    assert result.stop_reason == "nan_loss" and seen == [1]
