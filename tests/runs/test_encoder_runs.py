"""A search, a retrain and predictions with each encoder family."""

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
from conftest import FAST
from PIL import Image


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v3_large", "efficientnet_b0"])
def test_search_retrain_and_predict_with_each_encoder_family(home, cli, monkeypatch, encoder):
    import torchvision

    torch.save(torchvision.models.get_model(encoder).state_dict(), home / "weights.pt")  # no download
    code, _, err = cli("search", "--trials", "1", "--pruner", "none", *FAST, "--set", f'model.encoder="{encoder}"',
                       "--set", f'model.pretrained="{home / "weights.pt"}"', "--set", 'train.loss="ce+dice"',
                       "--set", 'train.class_weights="sqrt_inverse"', "--set", 'train.schedule="poly"')
    assert code == 0, err
    code, out, err = cli("retrain", "--best")
    assert code == 0, err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlruns/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{home}/mlruns/mlflow.db")
    pyfunc = mlflow.pyfunc.load_model("models:/unet-opt-default@champion")
    assert pyfunc.predict(np.zeros((1, 3, 40, 60), np.float32)).shape == (1, 24, 40, 60)
    Image.fromarray(np.full((50, 75, 3), 90, np.uint8)).save(home / "photo.png")
    code, _, err = cli("predict", "models:/unet-opt-default@champion", "photo.png", "--out", "p")
    assert code == 0, err
    assert Image.open(home / "p" / "photo_mask.png").size == (75, 50)
    ckpt = next((home / "studies" / "checkpoints").glob("*.pt"))
    code, out, err = cli("evaluate", str(ckpt))
    assert code == 0 and "test_dice" in out, err
