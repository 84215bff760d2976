"""One ruler per study: its trials at every size scored on the same val pixels, its frame fixed."""

import csv
import io
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import FAST
from mlflow.tracking import MlflowClient

from unet_opt.core.metrics import scores_from_matrix
from unet_opt.study.storage import study_setup


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_study_s_evaluation_frame_cannot_change(home, cli):
    assert cli("search", "--trials", "1", "--pruner", "none", *FAST)[0] == 0
    code, _, err = cli("search", "--trials", "2", "--pruner", "none", *FAST, "--set", "data.eval_size=48")
    assert code == 2 and "changed: data.eval_size 32 -> 48" in err  # the frames named, as they were resolved


@pytest.mark.slow
def test_an_evaluation_frame_below_the_training_sizes_is_said(home, cli):
    code, _, err = cli("search", "--trials", "1", "--pruner", "none", *FAST, "--set", "data.eval_size=16")
    assert code == 0 and "data.eval_size = 16 is below the largest data.image_size the space draws (32)" in err
