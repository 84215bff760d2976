"""Real data folders: the three layouts, the decode-once cache, bad data found before training."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import written_files
from datasets import TABLE, make_dataset, nearest
from mlflow.tracking import MlflowClient

from unet_opt.config.schema import DataConfig
from unet_opt.core.data import IGNORE, load_data
from unet_opt.core.data import cache as cache_module

LAYOUTS = [("kaggle", False), ("tu-graz", True), ("generic", False), ("generic", True)]


@pytest.mark.parametrize("layout, colour", LAYOUTS)
@pytest.mark.parametrize("height", [48, 32])  # the files' own size, and a resize to 32x48
def test_masks_decode_to_exactly_the_written_classes(tmp_path, layout, colour, height):
    truth = make_dataset(tmp_path / "data", layout, colour=colour)
    cfg = DataConfig(dataset=str(tmp_path / "data"), num_classes=len(TABLE), ignore_index=-1, image_size=height)
    data = load_data(cfg, depth=3, cache_dir=tmp_path / "cache")
    width = height * 3 // 2  # 48x72 photos: aspect 3:2
    assert data.images.shape[1:] == (3, height, width) and data.names == sorted(truth)
    for i, name in enumerate(data.names):
        # class indices pixel for pixel: exact at full size, nearest-neighbour exact after resizing
        assert np.array_equal(data.masks[i].numpy(), nearest(truth[name], height, width)), name
    assert data.classes.names == TABLE.names  # names and colours come from the class table


def test_cache_is_decoded_once_and_keyed_by_content(tmp_path, monkeypatch):
    truth = make_dataset(tmp_path / "data", "kaggle")
    cfg = DataConfig(dataset=str(tmp_path / "data"), num_classes=len(TABLE), image_size=32)
    first = load_data(cfg, depth=3, cache_dir=tmp_path / "cache")
    folders = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "images.npy").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "decode_image", no_decoding)
    again = load_data(cfg, depth=3, cache_dir=tmp_path / "cache")
    # the second load reads the memory-mapped cache only
    assert np.array_equal(again.masks.numpy(), first.masks.numpy())
    monkeypatch.undo()
    # a file with new content gets a new cache; ignored pixels (class 0) are marked as such
    (tmp_path / "data" / "label_images_semantic" / "000.png").write_bytes(
        (tmp_path / "data" / "label_images_semantic" / "001.png").read_bytes())
    changed = load_data(cfg, depth=3, cache_dir=tmp_path / "cache")
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2
    assert np.array_equal(changed.masks[0].numpy(), changed.masks[1].numpy())
    assert ((changed.masks == IGNORE) == (nearest(truth["001"], 32, 48) == 0)).numpy()[1].all()


@pytest.mark.slow
def test_two_processes_filling_one_cache_at_once(tmp_path):
    make_dataset(tmp_path / "data", "tu-graz", count=12)
    code = ("import sys; from unet_opt.config.schema import DataConfig; from unet_opt.core.data import load_data; "
            f"d = load_data(DataConfig(dataset={str(tmp_path / 'data')!r}, num_classes=5, image_size=48), 3, "
            f"cache_dir=__import__('pathlib').Path({str(tmp_path / 'cache')!r})); print(int(d.masks.sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    # both succeed with the same data, and exactly one complete cache is left
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1]
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len([e for e in entries if not e.endswith(".json")]) == 1 and not [e for e in entries if "tmp" in e]


def corrupt(root, kind):
    """Break a Kaggle-layout folder in one way; returns the file name the error must mention."""
    images, masks = root / "original_images", root / "label_images_semantic"
    if kind == "unreadable image":
        (images / "002.jpg").write_bytes(b"not a jpeg")
        return "002.jpg"
    if kind == "image without mask":
        (masks / "003.png").unlink()
        return "003.jpg"
    if kind == "mask without image":
        (images / "004.jpg").unlink()
        return "004.png"
    if kind == "size mismatch":
        from PIL import Image
        Image.open(images / "001.jpg").resize((50, 40)).save(images / "001.jpg")
        return "001.jpg"
    if kind == "mask value too large":
        from PIL import Image
        Image.fromarray(np.full((48, 72), 9, np.uint8)).save(masks / "005.png")
        return "005.png"
    if kind == "colour not in table":
        from PIL import Image
        (root / "class_dict_seg.csv").rename(root / "class_dict.csv")
        make_dataset(root / "tg", "tu-graz")
        Image.fromarray(np.full((48, 72, 3), 7, np.uint8)).save(root / "tg/training_set/gt/semantic/label_images/000.png")
        return "000.png"
    if kind == "empty folder":
        for p in list(images.iterdir()) + list(masks.iterdir()):
            p.unlink()
        return "holds no image"
    if kind == "bad class table row":
        (root / "class_dict_seg.csv").write_text("name, r, g, b\nunlabeled, 0, 0, 0\nroad, 128, sixty, 128\n")
        return "class_dict_seg.csv, line 3"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["unreadable image", "image without mask", "mask without image", "size mismatch",
                                  "mask value too large", "colour not in table", "empty folder",
                                  "bad class table row"])
def test_bad_data_is_named_before_training(home, cli, kind):
    make_dataset(home / "data", "kaggle")
    expected = corrupt(home / "data", kind)
    target = home / "data" / "tg" if kind == "colour not in table" else home / "data"
    before = written_files(home)
    code, out, err = cli("search", "--data", str(target), "--space", "drone", "--set", "data.num_classes=5",
                         "--set", "data.image_size=32", "--set", "model.depth=2", "--set", 'model.pretrained=""')
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert expected in err  # the file (or the folder's state) is named
    # nothing trained, nothing written to studies/ or mlruns/
    assert "trial" not in out + err.split("error:")[0]
    assert written_files(home) == before


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["kaggle", "tu-graz"])
def test_search_on_a_real_layout_logs_its_class_names(home, cli, layout):
    make_dataset(home / "data", layout, count=12)
    code, out, err = cli("search", "--data", "data", "--space", "drone", "--trials", "2", "--pruner", "none",
                         "--set", "data.num_classes=5", "--set", "data.image_size=32", "--set", "model.depth=2",
                         "--set", "model.base_channels=4", "--set", "train.epochs=2", "--set", 'model.pretrained=""')
    assert code == 0, err
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("unet-opt-drone")
    run = client.search_runs([exp.experiment_id], "tags.`optuna.trial` = '0'")[0]
    path = client.download_artifacts(run.info.run_id, "per_class.csv", str(home))
    rows = [line.split(",")[0] for line in open(path).read().splitlines()[1:]]
    assert rows == list(TABLE.names)


def test_data_check_and_prepare(home, cli):
    make_dataset(home / "data", "tu-graz")
    code, out, _ = cli("data", "check", "data", "--num-classes", "5")
    assert code == 0 and "layout: tu-graz" in out and "6 image/mask pairs" in out and "72x48 (6)" in out
    assert "road" in out and "no problems found" in out
    code, out, _ = cli("data", "prepare", "data", "--image-size", "32", "--image-size", "48",
                       "--space", "drone", "--set", "data.num_classes=5", "--set", "model.depth=3")
    assert code == 0 and "6 images cached at 32x48" in out and "6 images cached at 48x72" in out
    assert len([p for p in (home / "studies" / "cache").iterdir() if p.is_dir()]) == 2
    (home / "data/training_set/images/000.jpg").unlink()
    code, out, err = cli("data", "check", "data", "--num-classes", "5")
    assert code == 2 and "problem: " in out and "000.png has no image" in out and err.startswith("error: 1 problem")


@pytest.mark.parametrize("damage", ["zeroed images", "truncated images", "flipped mask bytes", "emptied masks"])
def test_a_damaged_cache_entry_is_rebuilt_with_one_warning(tmp_path, caplog, damage):
    make_dataset(tmp_path / "data", "kaggle")
    cfg = DataConfig(dataset=str(tmp_path / "data"), num_classes=len(TABLE), image_size=32)
    first = load_data(cfg, depth=3, cache_dir=tmp_path / "cache")
    expected = first.images.clone(), first.masks.clone()  # `first` maps the files about to be damaged
    del first
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    images, masks = folder / "images.npy", folder / "masks.npy"
    if damage == "zeroed images":
        data = bytearray(images.read_bytes())
        data[200:] = bytes(len(data) - 200)  # the header stays, the pixels go black
        images.write_bytes(bytes(data))
    elif damage == "truncated images":
        images.write_bytes(images.read_bytes()[:1000])
    elif damage == "emptied masks":
        masks.write_bytes(b"")
    else:
        data = bytearray(masks.read_bytes())
        data[-50:] = b"\xee" * 50  # mask values no class has
        masks.write_bytes(bytes(data))
    cache_module.VERIFIED.clear()  # as in a new process, which checks each entry once
    again = load_data(cfg, depth=3, cache_dir=tmp_path / "cache")
    # the entry was rebuilt from the files, with one warning naming it
    assert torch.equal(again.images, expected[0]) and torch.equal(again.masks, expected[1])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "is damaged; decoding the images again" in warnings[0]


def test_data_check_decodes_every_image_fully(home, cli):
    make_dataset(home / "data", "kaggle")
    photo = home / "data" / "original_images" / "002.jpg"
    photo.write_bytes(photo.read_bytes()[: len(photo.read_bytes()) // 2])  # the header is intact
    code, out, err = cli("data", "check", "data")
    assert code == 2 and "002.jpg cannot be decoded" in out + err


def test_data_check_names_the_rare_classes_and_what_helps_them(home, cli):
    from PIL import Image

    make_dataset(home / "data", "generic", colour=False)
    for i in range(6):  # road and grass halves; one image has a car of 2x2 pixels, and one unlabeled pixel;
        mask = np.ones((48, 72), np.uint8)  # no roof anywhere
        mask[:, 36:] = 2
        if i == 0:
            mask[10:12, 10:12] = 4
            mask[30, 30] = 0
        Image.fromarray(mask).save(home / "data" / "masks" / f"{i:03d}.png")
    code, out, _ = cli("data", "check", "data", "--num-classes", "5")
    assert code == 0, out
    [line] = [line for line in out.splitlines() if line.startswith("rare classes")]
    assert line.startswith("rare classes (under 0.5% of the pixels): car 0.017%.") and "roof" not in line
    assert "unlabeled" not in line  # the ignored class is not one to train for
    assert 'train.class_weights = "inverse"' in line and "search/drone.toml" in line
