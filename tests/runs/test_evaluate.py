"""`unet-opt evaluate` at the frame a model was judged at, and at the photos' own size."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import make_dataset
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.metrics import confusion_matrix

from unet_opt.config.schema import DataConfig
from unet_opt.core.data import load_data


def test_a_baseline_at_32_px_evaluated_by_its_run_id_gives_the_val_dice_it_logged(home, cli):
    code, _, err = cli("train", "--set", "train.epochs=2", "--set", "data.image_size=32", "--set", "data.eval_size=64",
                       "--set", "data.synthetic_images=24", "--set", "model.base_channels=8")
    assert code == 0, err
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("unet-opt-default-baseline").experiment_id])
    best_epoch = int(run.data.tags["best_epoch"])
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_dice")}[best_epoch]
    code, out, _ = cli("evaluate", run.info.run_id, "--split", "val")
    assert code == 0 and "scored at 64x96 (the evaluation frame it was judged at)" in out
    shown = float(next(line.split()[1] for line in out.splitlines() if line.startswith("val_dice ")))
    assert round(shown, 4) == round(logged, 4)


def test_evaluate_native_scores_each_photo_at_its_own_size(home, cli):
    truth = make_dataset(home / "data", "generic", count=10, height=90, width=132)
    for name in list(truth)[:5]:  # half the photos mostly unlabeled: a mean over photos would weigh them alike
        truth[name][:, :120] = 0
        Image.fromarray(truth[name]).save(home / "data" / "masks" / f"{name}.png")
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
    expected, loss_sum = np.zeros((5, 5), np.int64), 0.0
    for i, name in enumerate(data.names):
        with torch.no_grad():
            logits = F.interpolate(ck.model(data.images[i:i + 1].float() / 127.5 - 1), size=(90, 132),
                                   mode="bilinear", align_corners=False)
        target = torch.from_numpy(truth[name]).long()[None]
        loss_sum += float(F.cross_entropy(logits, target, ignore_index=0, reduction="sum"))
        logits[:, 0] = float("-inf")  # "unlabeled" is never a target, so never a prediction
        pred = logits.argmax(1)[0].numpy()
        keep = truth[name] != 0
        expected += confusion_matrix(truth[name][keep], pred[keep], labels=range(5))
    assert matrix.sum() == sum(int((t != 0).sum()) for t in truth.values())
    assert (matrix == expected).all() and matrix[:, 0].sum() == 0
    # the loss is a mean over every scored pixel of the photos, not over photos of unequal labelled areas
    shown = float(next(line.split()[1] for line in out.splitlines() if line.startswith("all_loss ")))
    assert shown == pytest.approx(loss_sum / matrix.sum(), abs=1e-4)
    code, _, err = cli("evaluate", checkpoint, "--frame", "native", "--data", "synthetic", "--out", "again")
    assert code == 2 and "--frame native" in err and not (home / "again").exists()
