"""`unet-opt predict`: masks at each photo's own size, as `evaluate --frame native` scores them."""

import numpy as np
import torch
import torch.nn.functional as F
from datasets import make_dataset
from PIL import Image

from unet_opt.config.schema import Config, DataConfig, ModelConfig
from unet_opt.core.data import ClassTable, frame_size
from unet_opt.core.data.images import resize_rgb
from unet_opt.core.model import build_model
from unet_opt.runs.checkpoint import save_checkpoint


def test_predict_writes_the_classes_of_the_logits_resized_to_the_photo(home, cli):
    torch.manual_seed(0)
    cfg = Config(data=DataConfig(image_size=32), model=ModelConfig(base_channels=4, depth=2))
    model = build_model(cfg.model, 24).eval()
    save_checkpoint(home / "model.pt", model, cfg, ClassTable.drone(), False, {"train": [], "val": [], "test": []})
    photo = np.random.default_rng(0).integers(0, 255, (90, 131, 3), dtype=np.uint8)
    Image.fromarray(photo).save(home / "photo.png")
    code, _, err = cli("predict", "model.pt", "photo.png", "--out", "p")
    assert code == 0, err
    mask = np.asarray(Image.open(home / "p" / "photo_mask.png"))
    # the model at its frame, its logits resized (bilinear) to 90x131, then the class of each pixel:
    # not the class map of the frame enlarged by nearest neighbour, which blurs every boundary
    height, width = frame_size(cfg.data, cfg.model.depth, aspect=131 / 90)
    x = torch.from_numpy(resize_rgb(photo, height, width)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        expected = F.interpolate(model(x), size=(90, 131), mode="bilinear", align_corners=False).argmax(1)[0]
    assert mask.shape == (90, 131) and (mask == expected.numpy()).mean() > 0.999


def test_predict_s_overlay_is_the_photo_and_mask_half_each_without_float_copies_of_the_photo():
    import tracemalloc

    from unet_opt.runs.inference import overlay

    rng = np.random.default_rng(0)
    image, colour = (rng.integers(0, 256, (300, 400, 3), dtype=np.uint8) for _ in range(2))
    tracemalloc.start()
    blended = overlay(image, colour)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(blended, ((image.astype(int) + colour) // 2).astype(np.uint8))
    # two uint16 copies and the result at most (float64 took 3 copies of 8 bytes: 24 bytes a value)
    assert peak <= 5 * image.size, peak


def test_evaluate_names_a_missing_data_folder_before_an_evaluation_already_there(home, cli):
    cfg = Config(data=DataConfig(image_size=32), model=ModelConfig(base_channels=4, depth=2))
    save_checkpoint(home / "model.pt", build_model(cfg.model, 24), cfg, ClassTable.drone(), False,
                    {"train": [], "val": [], "test": []})
    (home / "evaluation").mkdir()
    (home / "evaluation" / "confusion_matrix.png").write_bytes(b"")
    code, _, err = cli("evaluate", "model.pt", "--data", "nowhere")
    # the folder is what was mistyped: "--overwrite" would only have led to this error next (a review)
    assert code == 2 and err.strip() == (f"error: data folder nowhere does not exist (from {home}); pass the folder "
                                         "holding the images and masks"), err


def test_evaluate_on_data_of_other_classes_says_so_and_offers_no_setting_it_lacks(home, cli):
    cfg = Config(data=DataConfig(image_size=32), model=ModelConfig(base_channels=4, depth=2))
    save_checkpoint(home / "model.pt", build_model(cfg.model, 24), cfg, ClassTable.drone(), False,
                    {"train": [], "val": [], "test": []})
    make_dataset(home / "data", "generic", count=6, height=40, width=60)  # 5 classes in its own table
    code, _, err = cli("evaluate", "model.pt", "--data", "data", "--split", "all")
    # it said "(--set data.num_classes=5; ...)", and evaluate has no --set: a model's classes are what they are
    assert code == 2 and err.startswith("error: this model predicts 24 classes and ") and "--set" not in err, err
    assert err.strip().endswith("has 5; evaluate it on data labelled with its 24 classes"), err
    assert not (home / "evaluation").exists()


def test_evaluate_on_other_data_names_its_frame_by_the_model_s_height_and_this_data_s_aspect(home, cli):
    from datasets import TABLE

    cfg = Config(data=DataConfig(image_size=32, eval_size=32, num_classes=5), model=ModelConfig(base_channels=4, depth=2))
    save_checkpoint(home / "model.pt", build_model(cfg.model, 5), cfg, TABLE, False, {"train": [], "val": [], "test": []})
    make_dataset(home / "square", "generic", count=6, height=40, width=40)
    code, out, err = cli("evaluate", "model.pt", "--data", "square", "--split", "all")
    # it said "32x32 (the evaluation frame it was judged at)" of a model judged at another aspect (a review)
    assert code == 0 and "scored at 32x32 (its evaluation frame's height, at this data's aspect)" in out, err


def test_evaluate_s_confusion_matrix_names_the_model_split_and_frame(home, cli, monkeypatch):
    from unet_opt.tracking import plots

    cfg = Config(data=DataConfig(image_size=32, synthetic_images=12), model=ModelConfig(base_channels=4, depth=2))
    save_checkpoint(home / "model.pt", build_model(cfg.model, 24), cfg, ClassTable.drone(), False,
                    {"train": [], "val": [], "test": []})
    titles = []
    monkeypatch.setattr(plots, "confusion_matrix", lambda matrix, names, path, title: titles.append(title))
    code, _, err = cli("evaluate", "model.pt", "--split", "all")
    assert code == 0 and titles == ["model.pt, all images, at 32x48"], err


def test_predict_names_a_model_not_found_before_an_output_already_there(home, cli):
    Image.new("RGB", (40, 30)).save(home / "photo.png")
    (home / "predictions").mkdir()
    (home / "predictions" / "photo_mask.png").write_bytes(b"")
    code, _, err = cli("predict", "models:/x@champion", "photo.png")
    assert code == 2 and "to find 'models:/x@champion' in" in err and "exists already" not in err, err


def test_scores_of_images_a_model_learned_from_are_said_so_by_their_names_with_or_without_data():
    from unet_opt.runs.checkpoint import Checkpoint
    from unet_opt.runs.inference import learned_caution

    split = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    retrained = Checkpoint(None, Config(), ClassTable.drone(), False, split, trained_on=("train", "val"))
    assert learned_caution(retrained, "test", {"d"}) == ""
    assert learned_caution(retrained, "all", {"a", "b", "c", "d"}) == (
        "this model learned from the train + val splits (it trained on train + val): its scores over all images are "
        "not held out; the test split's are (--split test)")  # a whole sentence (found by a review)
    assert learned_caution(retrained, "val", {"c"}).startswith("this model learned from the val split (it trained")
    # other data, whose names the model never saw: nothing to say
    assert learned_caution(retrained, "all", {"x", "y"}) == ""
