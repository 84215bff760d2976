"""One ruler per study: every trial is scored at the study's evaluation frame, whatever size it trains at;
`evaluate` scores at that frame, or at the photos' own size."""

import csv
import io
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from conftest import FAST
from datasets import make_dataset
from mlflow.tracking import MlflowClient
from sklearn.metrics import confusion_matrix, f1_score

from unet_opt.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.config.space_file import load_config, stored_config
from unet_opt.core.data import IGNORE, load_data, make_split, relabel, split_indices, synthetic
from unet_opt.core.data.classes import ClassTable
from unet_opt.core.metrics import scores_from_matrix
from unet_opt.core.native import resized_bands
from unet_opt.core.train import fit
from unet_opt.study.storage import study_setup


def sklearn_dice(truth: torch.Tensor, pred: torch.Tensor) -> float:
    """Macro F1 over the classes present in truth or prediction, scored pixels only: the study's `dice`."""
    keep = truth != IGNORE
    t, p = truth[keep].numpy(), pred[keep].numpy()
    return f1_score(t, p, labels=np.union1d(t, p), average="macro")


def test_the_evaluation_frame_is_the_largest_size_the_space_draws_unless_set():
    cfg = load_config("default")  # image sizes 32, 48, 64
    assert cfg.data.eval_size == 0 and cfg.with_eval_size().data.eval_size == 64
    assert load_config("default", sets=["data.image_size=32"]).with_eval_size().data.eval_size == 32  # not searched
    assert load_config("default", sets=["data.eval_size=48"]).with_eval_size().data.eval_size == 48
    # a config stored before the field existed (a checkpoint, a study) scores at its own frame, as it was judged
    old = "[data]\nimage_size = 32\n[model]\nbase_channels = 8\n"
    assert stored_config(old, "old checkpoint").data.eval_size == -1
    assert stored_config("[data]\neval_size = 64\n", "a new checkpoint").data.eval_size == 64


def test_a_trial_at_32_px_is_scored_against_masks_drawn_at_64_px_as_scikit_learn_scores_it():
    data = load_data(DataConfig(image_size=32, eval_size=64, synthetic_images=24), depth=2)
    assert tuple(data.images.shape[-2:]) == (32, 48) and data.scored_frame == (64, 96)
    # the masks it is scored by are drawn at 64x96 from the scene itself, not upsampled from 32x48
    _, drawn, _ = synthetic.generate(24, 64, 96)
    expected, _ = relabel(drawn, ClassTable.drone(), DataConfig())
    assert torch.equal(data.eval_masks, torch.from_numpy(expected))
    split = split_indices(make_split(data.names, 0.2, 0.2, 0), data.names)
    cfg = Config(data=DataConfig(augment="none"), model=ModelConfig(base_channels=4, depth=2),
                 train=TrainConfig(lr=0.01, batch_size=4, epochs=2, patience=9))
    result = fit(cfg, data, split)
    # the confusion matrix counts the scored pixels of the 64x96 masks
    val_truth = data.eval_masks[split["val"]]
    assert result.confusion.sum() == int((val_truth != IGNORE).sum())
    # the logged Dice is scikit-learn's on the prediction upsampled (bilinear logits, then argmax) to 64x96
    x = data.images[split["val"]].float() / 127.5 - 1
    with torch.no_grad():
        pred = F.interpolate(result.model(x), size=(64, 96), mode="bilinear", align_corners=False).argmax(1)
    assert result.best_metrics["val_dice"] == pytest.approx(sklearn_dice(val_truth, pred), abs=1e-9)


def test_trials_at_32_and_64_px_are_scored_on_the_same_val_pixels(home, cli):
    code, _, err = cli("search", "--trials", "4", "--pruner", "none", *FAST, "--set", "space.image_size.choices=[32, 64]",
                       "--set", "space.epochs.high=2")
    assert code == 0, err
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{home}/studies/unet-opt.db")
    assert {t.params["data.image_size"] for t in study.trials} == {32, 64}  # both sizes drawn (seed 0)
    assert study_setup(study._storage, "default")["config"]["data.eval_size"] == 64  # fixed with the study
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    counted = set()
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.params["data.eval_size"] == "64"
        path = client.download_artifacts(run.info.run_id, "confusion_matrix.csv", str(home))
        rows = list(csv.reader(io.StringIO(Path(path).read_text())))[1:]
        matrix = np.array([[int(v) for v in row[1:]] for row in rows])
        counted.add(int(matrix.sum()))
        # the trial's value is the Dice of the matrix it logged
        assert scores_from_matrix(matrix)["dice"] == pytest.approx(run.data.metrics["best_val_dice"])
    assert len(counted) == 1  # 32 px and 64 px trials: the same val pixels


def test_a_study_s_evaluation_frame_cannot_change(home, cli):
    assert cli("search", "--trials", "1", "--pruner", "none", *FAST)[0] == 0
    code, _, err = cli("search", "--trials", "2", "--pruner", "none", *FAST, "--set", "data.eval_size=48")
    assert code == 2 and "changed: data.eval_size" in err


def test_a_baseline_at_32_px_evaluated_by_its_run_id_gives_the_val_dice_it_logged(home, cli):
    code, _, err = cli("train", "--set", "train.epochs=2", "--set", "data.image_size=32", "--set", "data.eval_size=64",
                       "--set", "data.synthetic_images=24", "--set", "model.base_channels=8")
    assert code == 0, err
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("unet-opt-default-baseline").experiment_id])
    best_epoch = int(run.data.tags["best_epoch"])
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_dice")}[best_epoch]
    code, out, _ = cli("evaluate", run.info.run_id, "--split", "val")
    assert code == 0 and "scored at 64x96 (its study's evaluation frame)" in out
    shown = float(next(line.split()[1] for line in out.splitlines() if line.startswith("val_dice ")))
    assert round(shown, 4) == round(logged, 4)


def test_resizing_logits_band_by_band_equals_resizing_them_at_once():
    logits = torch.randn(1, 5, 7, 11)
    whole = F.interpolate(logits, size=(45, 61), mode="bilinear", align_corners=False)
    bands = list(resized_bands(logits, 45, 61, band_bytes=5 * 61 * 4 * 4))  # 4 rows a band
    assert len(bands) == 12 and all(band.shape[-2] <= 4 for _, band in bands)
    assert torch.allclose(torch.cat([band for _, band in bands], dim=2), whole, atol=1e-5)


def test_evaluate_native_scores_each_photo_at_its_own_size(home, cli):
    truth = make_dataset(home / "data", "generic", count=10, height=90, width=132)
    code, out, err = cli("train", "--data", "data", "--set", "data.num_classes=5", "--set", "data.image_size=32",
                         "--set", "train.epochs=1", "--set", "model.base_channels=4")
    assert code == 0, err
    checkpoint = next(line.split()[1] for line in out.splitlines() if line.startswith("checkpoint:"))
    code, out, err = cli("evaluate", checkpoint, "--split", "all", "--frame", "native", "--out", "native")
    assert code == 0 and "scored at each photo's own size" in out, err
    rows = list(csv.reader((home / "native" / "confusion_matrix.csv").open()))[1:]
    matrix = np.array([[int(v) for v in row[1:]] for row in rows])
    # every labelled pixel of the photos at 90x132 (class 0, "unlabeled", is ignored), and the same counts
    # as the prediction resized to the photo's size at once and scored by scikit-learn
    from unet_opt.runs.checkpoint import load_checkpoint

    ck = load_checkpoint(Path(checkpoint))
    data = load_data(DataConfig(dataset=str(home / "data"), num_classes=5, image_size=32, eval_size=-1), 3,
                     home / "studies" / "cache")
    expected = np.zeros((5, 5), np.int64)
    for i, name in enumerate(data.names):
        with torch.no_grad():
            logits = ck.model(data.images[i:i + 1].float() / 127.5 - 1)
        pred = F.interpolate(logits, size=(90, 132), mode="bilinear", align_corners=False).argmax(1)[0].numpy()
        keep = truth[name] != 0
        expected += confusion_matrix(truth[name][keep], pred[keep], labels=range(5))
    assert matrix.sum() == sum(int((t != 0).sum()) for t in truth.values())
    assert (matrix == expected).all()
    code, _, err = cli("evaluate", checkpoint, "--frame", "native", "--data", "synthetic", "--out", "again")
    assert code == 2 and "--frame native" in err and not (home / "again").exists()
