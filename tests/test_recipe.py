"""The training recipe: losses, class weights, optimizers, schedules, encoders and pretrained weights."""

import math
import urllib.error

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
from conftest import FAST, written_files
from PIL import Image

from unet_opt.config.schema import ModelConfig, TrainConfig
from unet_opt.core.data import IGNORE
from unet_opt.core.encoders import ENCODERS
from unet_opt.core.losses import class_weights, segmentation_loss
from unet_opt.core.model import build_model
from unet_opt.core.optim import lr_factor, make_optimizer, make_schedule
from unet_opt.errors import UserError


def two_pixels(p_first: float, p_second: float, extra_ignored: bool = False):
    """Two scored pixels of a 2-class task, true classes 0 then 1, with the softmax probabilities
    (p, 1 - p) at each; optionally a third pixel, ignored, with wild logits."""
    probabilities = [[p_first, 1 - p_first], [p_second, 1 - p_second]]
    target = [0, 1]
    if extra_ignored:
        probabilities.append([0.999, 0.001])
        target.append(IGNORE)
    logits = torch.tensor(probabilities).log().T.reshape(1, 2, 1, -1)
    return logits, torch.tensor(target).reshape(1, 1, -1)


# by hand: pixel 1 has p(true) = 0.8, pixel 2 has p(true) = 0.6
CE = (-math.log(0.8) - math.log(0.6)) / 2
DICE = 1 - ((2 * 0.8 + 1) / (0.8 + 0.4 + 1 + 1) + (2 * 0.6 + 1) / (0.2 + 0.6 + 1 + 1)) / 2  # smooth 1
FOCAL = (0.2**2 * -math.log(0.8) + 0.4**2 * -math.log(0.6)) / 2


@pytest.mark.parametrize("kind,expected", [("ce", CE), ("dice", DICE), ("ce+dice", CE + DICE), ("focal", FOCAL)])
@pytest.mark.parametrize("ignored", [False, True], ids=["all scored", "one ignored"])
def test_each_loss_matches_its_hand_computed_value_and_leaves_ignored_pixels_out(kind, expected, ignored):
    logits, target = two_pixels(0.8, 0.4, ignored)
    assert segmentation_loss(logits, target, False, kind).item() == pytest.approx(expected, rel=1e-5)


def test_binary_losses_on_one_logit():
    logits = torch.tensor([math.log(4), -math.log(4), 5.0]).reshape(1, 1, 1, 3)  # p(fg) = 0.8, 0.2, (ignored)
    target = torch.tensor([1, 0, IGNORE]).reshape(1, 1, 3)
    bce = -math.log(0.8)
    dice = 1 - (2 * 0.8 + 1) / (1 + 1 + 1)  # both classes (bg, fg): p sums 1.0, one true pixel each
    assert segmentation_loss(logits, target, True, "ce").item() == pytest.approx(bce, rel=1e-5)
    assert segmentation_loss(logits, target, True, "dice").item() == pytest.approx(dice, rel=1e-5)
    assert segmentation_loss(logits, target, True, "ce+dice").item() == pytest.approx(bce + dice, rel=1e-5)
    assert segmentation_loss(logits, target, True, "focal").item() == pytest.approx(0.2**2 * bce, rel=1e-5)


def test_class_weights_weigh_each_pixel_by_its_class():
    logits, target = two_pixels(0.8, 0.4)
    weights = torch.tensor([1.0, 3.0])
    expected = (-math.log(0.8) - 3 * math.log(0.6)) / 4  # a weighted mean, as F.cross_entropy(weight=) takes
    assert segmentation_loss(logits, target, False, "ce", weights).item() == pytest.approx(expected, rel=1e-5)
    assert segmentation_loss(logits, target, False, "focal", weights).item() == pytest.approx(
        (0.2**2 * -math.log(0.8) + 3 * 0.4**2 * -math.log(0.6)) / 4, rel=1e-5)


def test_the_dice_term_counts_every_class_alike_whatever_the_class_weights():
    logits, target = two_pixels(0.8, 0.4)
    weighted = segmentation_loss(logits, target, False, "dice", torch.tensor([1.0, 100.0]))
    assert weighted.item() == pytest.approx(DICE, rel=1e-5)


def test_class_weights_are_capped():
    mask = torch.zeros(1, 1, 100_000, dtype=torch.uint8)
    mask[0, 0, :3] = 1  # 3 pixels in 100,000: 1/f would weigh them 16,667 times the average pixel
    assert class_weights(mask, 2, "inverse")[1].item() == 50.0


def test_class_weights_from_a_known_mask():
    mask = torch.tensor([[0] * 6 + [1] * 3 + [2] + [IGNORE] * 5], dtype=torch.uint8)  # 60%, 30%, 10%, class 3 absent
    assert class_weights(mask[None], 4, "none") is None
    inverse = class_weights(mask[None], 4, "inverse")
    assert inverse.tolist() == pytest.approx([1 / 1.8, 1 / 0.9, 1 / 0.3, 1 / 0.3], rel=1e-5)  # 1/f over 3
    root = class_weights(mask[None], 4, "sqrt_inverse")
    f = np.array([0.6, 0.3, 0.1])
    w = 1 / np.sqrt(f) / (np.sqrt(f).sum())
    assert root.tolist() == pytest.approx([*w, w.max()], rel=1e-5)
    assert float((root[:3] * torch.tensor(f, dtype=torch.float32)).sum()) == pytest.approx(1.0)  # the average pixel


@pytest.mark.parametrize("schedule,points", [
    ("constant", {0: 1 / 3, 1: 2 / 3, 2: 1.0, 50: 1.0, 101: 1.0}),  # warm-up of 2 steps, then flat
    ("cosine", {2: 1.0, 52: 0.5, 102: 0.0}),
    ("poly", {2: 1.0, 52: 0.5**0.9, 102: 0.0}),
])
def test_each_schedule_s_curve(schedule, points):
    for step, factor in points.items():
        assert lr_factor(schedule, step, warmup=2, total=102) == pytest.approx(factor, abs=1e-9), step


def test_the_schedule_steps_per_optimizer_step_and_onecycle_peaks_at_lr():
    cfg = TrainConfig(lr=0.1, epochs=4, schedule="onecycle", warmup_epochs=1, optimizer="sgd", momentum=0.5)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    assert optimizer.defaults["nesterov"]
    schedule = make_schedule(optimizer, cfg, steps_per_epoch=10)
    rates = []
    for _ in range(40):
        rates.append(optimizer.param_groups[0]["lr"])
        assert optimizer.param_groups[0]["momentum"] == 0.5  # train.momentum holds: onecycle cycles the rate only
        optimizer.step()
        schedule.step()
    assert max(rates) == pytest.approx(0.1) and rates.index(max(rates)) == 10  # the top after 1 epoch of warm-up
    assert rates[0] == pytest.approx(0.1 / 25) and rates[-1] < 1e-3


@pytest.mark.parametrize("schedule", ["constant", "cosine", "poly", "onecycle"])
@pytest.mark.parametrize("epochs,steps,warmup", [(1, 1, 0), (1, 2, 1), (2, 1, 1), (3, 1, 0), (2, 3, 2)])
def test_every_schedule_runs_on_the_shortest_trials(schedule, epochs, steps, warmup):
    cfg = TrainConfig(lr=0.01, epochs=epochs, schedule=schedule, warmup_epochs=warmup)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch=steps)
    for _ in range(epochs * steps):
        assert 0 < optimizer.param_groups[0]["lr"] <= 0.01
        optimizer.step()
        schedule.step()


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


@pytest.mark.parametrize("encoder", ENCODERS)
def test_each_encoder_gives_logits_at_the_input_s_size(encoder):
    model = build_model(ModelConfig(encoder=encoder, base_channels=4), 5).eval()
    sizes = [(32, 48), (64, 96)] if encoder == "none" else [(24, 36), (40, 60), (56, 84)]  # odd 3:2 sizes
    with torch.no_grad():
        for h, w in sizes:
            assert model(torch.zeros(2, 3, h, w)).shape == (2, 5, h, w)


def test_pretrained_weights_load_from_a_state_dict_file(tmp_path):
    import torchvision

    source = torchvision.models.resnet18()
    torch.nn.init.constant_(source.conv1.weight, 0.125)
    torch.save(source.state_dict(), tmp_path / "resnet18.pt")
    cfg = ModelConfig(encoder="resnet18", pretrained=str(tmp_path / "resnet18.pt"))
    assert (build_model(cfg, 3, pretrained=True).stages[0][0].weight == 0.125).all()
    assert not (build_model(cfg, 3).stages[0][0].weight == 0.125).all()  # a checkpoint brings its own weights
    for other in ("resnet50", "resnet34"):  # resnet34 holds every tensor of resnet18, and more: refused too
        torch.save(torchvision.models.get_model(other).state_dict(), tmp_path / "other.pt")
        with pytest.raises(UserError, match="not a state_dict of torchvision's resnet18"):
            build_model(ModelConfig(encoder="resnet18", pretrained=str(tmp_path / "other.pt")), 3, pretrained=True)


@pytest.mark.parametrize("content", ["garbage", "whole model", "another network"])
def test_a_bad_weights_file_is_one_error_line_before_anything_is_written(home, cli, content):
    import torchvision

    path = home / "weights.pt"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save(torchvision.models.resnet18() if content == "whole model" else
                   torchvision.models.mobilenet_v3_large().state_dict(), path)
    code, _, err = cli("search", "--trials", "1", *FAST, "--set", 'model.encoder="resnet18"',
                       "--set", f'model.pretrained="{path}"')
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model.pretrained: " in err, err
    assert written_files(home) == ["weights.pt"]


def offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_imagenet_weights_offline_are_one_error_line_and_nothing_written(home, cli, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    code, out, err = cli("search", "--trials", "1", *FAST, "--set", 'model.encoder="resnet18"',
                         "--set", 'model.pretrained="imagenet"')
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: model.pretrained = \"imagenet\": cannot download https://download.pytorch.org/")
    assert "model.pretrained=PATH" in err and written_files(home) == []


@pytest.mark.parametrize("sets,message", [
    (['model.pretrained="imagenet"'], "model.pretrained needs a model.encoder"),
    (['model.encoder="resnet18"', 'model.pretrained="absent.pt"'], "model.pretrained: no file absent.pt"),
    (['train.loss="lovasz"'], "train.loss"),
    (["train.momentum=1.5"], "train.momentum = 1.5 is too large"),
    (["train.grad_clip=-1"], "train.grad_clip = -1"),
    (["train.warmup_epochs=5"], "train.warmup_epochs must be fewer than train.epochs"),
])
def test_bad_recipe_settings_are_one_error_line(home, cli, sets, message):
    code, _, err = cli("search", "--trials", "1", *FAST, *(arg for s in sets for arg in ("--set", s)))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert written_files(home) == []


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


def test_the_pretrained_weights_cannot_be_searched(home, cli):
    (home / "s.toml").write_text('[space."model.pretrained"]\ntype = "categorical"\nchoices = ["imagenet", "x.pt"]\n')
    code, _, err = cli("search", "--space", "s.toml", *FAST)
    assert code == 2 and "model.pretrained cannot be searched" in err and len(err.strip().splitlines()) == 1, err
