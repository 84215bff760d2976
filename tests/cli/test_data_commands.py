"""`unet-opt data check` and `data prepare`, and bad data named before training."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import written_files
from datasets import TABLE, make_dataset
from mlflow.tracking import MlflowClient
from PIL import Image


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
    if kind == "decompression bomb":
        write_bomb(images / "002.jpg")
        return "002.jpg claims more pixels than Pillow opens"
    if kind == "zero-byte file":
        (masks / "003.png").write_bytes(b"")
        return "003.png cannot be read"
    if kind == "dangling link":
        (images / "004.jpg").unlink()
        (images / "004.jpg").symlink_to(root / "gone.jpg")
        return "004.jpg is a link to"
    raise ValueError(kind)


def write_bomb(path, side: int = 20000) -> None:
    """A small PNG whose header claims side x side pixels: what a decompression bomb looks like to a reader."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    chunk = b"IHDR" + header
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk
                     + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


@pytest.mark.parametrize("kind", ["unreadable image", "image without mask", "mask without image", "size mismatch",
                                  "mask value too large", "colour not in table", "empty folder",
                                  "bad class table row", "decompression bomb", "zero-byte file", "dangling link"])
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
    # and the frame a study of drone.toml scores at (its largest image size): decoded once, for both
    assert out.count("(masks also at 640x960, the evaluation frame)") == 2
    assert len([p for p in (home / "studies" / "cache").iterdir() if p.is_dir()]) == 3
    (home / "data/training_set/images/000.jpg").unlink()
    code, out, err = cli("data", "check", "data", "--num-classes", "5")
    assert code == 2 and "problem: " in out and "000.png has no image" in out and err.startswith("error: 1 problem")


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
    # a class of the table that no mask holds is said to be absent, not a rounded 0% (a review)
    assert re.search(r"^3 +roof +none: in no mask$", out, re.M) and re.search(r"^4 +car +0.017%$", out, re.M), out
    assert "\nin no mask: roof (nothing to learn them from; if the photos show them, check the masks" in out
    assert 'train.class_weights = "inverse"' in line and "search/drone.toml" in line


def test_data_check_names_each_problem_once_and_goes_on_past_a_decompression_bomb(home, cli):
    make_dataset(home / "data", "kaggle", count=8)
    root = home / "data"
    for kind in ("decompression bomb", "zero-byte file", "dangling link"):
        corrupt(root, kind)
    code, out, err = cli("data", "check", "data", "--num-classes", "5")
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    # one line per broken file, none of them a traceback or a made-up partner
    assert code == 2 and err.startswith("error: 3 problem(s)") and len(problems) == 3, out + err
    assert sum("002.jpg claims more pixels than Pillow opens" in line for line in problems) == 1
    assert sum("003.png" in line for line in problems) == 1  # unreadable header: not "cannot be decoded" too
    assert sum("004.jpg is a link to" in line and "gone.jpg" in line for line in problems) == 1
    assert "has no image" not in out and "has no mask" not in out  # the link's partner is not named missing
    code, _, err = cli("data", "prepare", "data", "--image-size", "32", "--set", "data.num_classes=5")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (home / "studies").exists()  # one line, nothing decoded into the cache


def test_data_check_takes_the_class_table_s_classes_unless_told_otherwise(home, cli):
    make_dataset(home / "data", "generic")  # a table of 5 classes
    code, out, err = cli("data", "check", "data")
    assert code == 0 and "no problems found" in out, out + err
    code, out, err = cli("data", "check", "data", "--num-classes", "6")  # what a search with 6 would meet
    assert code == 2 and "data.num_classes = 6 but data/classes.csv has 5 classes" in out, out + err


def test_data_check_says_what_search_refuses_of_too_few_images(home, cli):
    make_dataset(home / "data", "generic", count=3)
    code, out, err = cli("data", "check", "data", "--num-classes", "5")
    assert code == 2 and "no problems found" not in out and err.startswith("error: 1 problem"), out + err
    assert "problem: 3 images are too few to split into train/val/test (0.15 val, 0.15 test); add images (train " \
           "needs 2, val and test 1 each)" in out


def test_data_check_lists_every_problem_of_a_folder_it_cannot_use(home, cli):
    """Found by a review: with no photo at all, `data check` gave the search's one line of three problems,
    which told the user to run `data check`."""
    make_dataset(home / "data", "generic", count=5)
    for photo in (home / "data" / "images").iterdir():
        photo.unlink()
    code, out, err = cli("data", "check", "data")
    assert code == 2 and err == "error: 6 problem(s) in data; fix the files listed above\n", err
    assert out.count("problem: ") == 6 and "problem: data/masks/004.png has no image" in out, out


def test_data_check_warns_about_photos_too_large_to_decode_cheaply(home, cli, monkeypatch):
    make_dataset(home / "data", "generic", count=4, height=48, width=72)
    monkeypatch.setattr("unet_opt.core.data.images.LARGE_PIXELS", 48 * 72 - 1)  # these photos count as huge
    code, out, _ = cli("data", "check", "data", "--num-classes", "5")
    assert code == 0 and "warning: 4 photo(s) above 0 M pixels, the largest" in out and "at 72x48" in out


def store_bytes(home: Path) -> tuple[bytes, bytes]:
    return (home / "studies" / "unet-opt.db").read_bytes(), (home / "mlruns" / "mlflow.db").read_bytes()


def decoded_sets(home: Path) -> set[str]:
    return {p.name for p in (home / "studies" / "cache").iterdir() if p.is_dir()}


@pytest.mark.slow
def test_a_study_refuses_other_data_behind_the_same_path_and_names(tmp_path, cli, monkeypatch):
    """`--data ../data` from another folder (or a copy with other content under the same names) is other
    data: refused before anything is written, by search and by retrain; the same content elsewhere is not."""
    tiny = ["--space", "drone", "--pruner", "none", "--set", "data.num_classes=5", "--set", "data.image_size=32",
            "--set", "model.depth=2", "--set", "model.base_channels=4", "--set", "train.epochs=1",
            "--set", "train.warmup_epochs=0", "--set", 'model.pretrained=""']
    project = tmp_path / "a" / "proj"
    make_dataset(tmp_path / "a" / "data", "generic", count=12, seed=0)
    project.mkdir()
    monkeypatch.chdir(project)
    code, _, err = cli("search", "--data", "../data", "--trials", "1", *tiny)
    assert code == 0, err
    make_dataset(tmp_path / "b" / "data", "generic", count=12, seed=1)  # the same names, other photos and masks
    (tmp_path / "b" / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "b" / "elsewhere")
    before, decoded = store_bytes(project), decoded_sets(project)
    code, _, err = cli("--home", str(project), "search", "--data", "../data", "--trials", "2", *tiny)
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: the data at ../data ({tmp_path / 'b' / 'data'}) is not the data study 'drone' was made with: " \
           f"12 of its images or their masks differ (first: 000); pass the study's data with --data, or start a " \
           f"new study" in err
    assert decoded_sets(project) == decoded  # refused before the other photos were decoded
    # the study's data left out: named, not a mismatch of class counts with the synthetic data
    code, _, err = cli("--home", str(project), "search", "--trials", "2", "--data", "synthetic", *tiny)
    assert code == 2 and err.count("\n") == 1, err
    assert "error: study 'drone' was made on the data folder given as ../data, not on the synthetic data; pass " \
           "that folder with --data PATH, or start a new study with --study NEW_NAME" in err
    code, _, err = cli("--home", str(project), "retrain", "--best", "--data", "../data")
    assert code == 2 and "pass where the study's data is now with --data PATH, or restore its files" in err, err
    code, _, err = cli("--home", str(project), "retrain", "--best", "--data", "synthetic")
    assert code == 2 and err == "error: study 'drone' was made on the data folder given as ../data, not on the " \
                                "synthetic data; pass that folder with --data PATH\n", err
    assert store_bytes(project) == before
    # ../data from here is other data, the project folder's ../data the study's: retrain takes that one (a review)
    code, _, err = cli("--home", str(project), "retrain", "--best")
    assert code == 0, err
    # the same photos and masks in another place are the study's data: the study goes on
    shutil.copytree(tmp_path / "a" / "data", tmp_path / "b" / "data", dirs_exist_ok=True)
    os.utime(tmp_path / "b" / "data" / "masks" / "003.png")  # a touched file with the same content is the same
    moved = str(tmp_path / "b" / "data")  # and the path may be written another way: the content is checked
    code, _, err = cli("--home", str(project), "search", "--data", moved, "--trials", "2", *tiny)
    assert code == 0, err
    monkeypatch.chdir(tmp_path)  # where the study's ../data is not, but is from the project folder (a review)
    code, _, err = cli("--home", str(project), "retrain", "--best")
    assert code == 0, err
    (tmp_path / "a" / "data").rename(tmp_path / "a" / "gone")  # from neither: retrain is told where it is now
    code, _, err = cli("--home", str(project), "retrain", "--best")
    assert code == 2 and f"the study's data folder ../data does not exist from here ({tmp_path}); pass where it " \
                         f"is now with --data PATH" in err, err
    code, _, err = cli("--home", str(project), "retrain", "--best", "--data", moved)
    assert code == 0, err
    (tmp_path / "a" / "gone").rename(tmp_path / "a" / "data")
    monkeypatch.chdir(tmp_path / "b" / "elsewhere")
    # one mask edited since: its image is named
    mask = tmp_path / "b" / "data" / "masks" / "005.png"
    Image.fromarray((np.asarray(Image.open(mask)) + 1) % 5).save(mask)
    code, _, err = cli("--home", str(project), "search", "--data", "../data", "--trials", "3", *tiny)
    assert code == 2 and "1 of its images or their masks differ (first: 005)" in err, err
    # an image of the split deleted since: refused before either store is touched
    shutil.copy(tmp_path / "a" / "data" / "masks" / "005.png", mask)
    (tmp_path / "b" / "data" / "images" / "001.jpg").unlink()
    (tmp_path / "b" / "data" / "masks" / "001.png").unlink()
    before = store_bytes(project)
    code, _, err = cli("--home", str(project), "search", "--data", "../data", "--trials", "2", *tiny)
    assert code == 2 and "1 image(s) of the stored split are not in the data (first: 001)" in err, err
    assert store_bytes(project) == before
