"""Real data folders: the three layouts and the decode-once cache."""

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import TABLE, make_dataset, nearest, write_table
from PIL import Image

from unet_opt.config.schema import DataConfig
from unet_opt.core.data import IGNORE, DataCache, load_data
from unet_opt.core.data import cache as cache_module
from unet_opt.core.data import images as images_module

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

    monkeypatch.setattr(images_module, "decode_image", no_decoding)
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


def test_the_evaluation_frame_is_decoded_as_masks_alone(tmp_path, monkeypatch):
    truth = make_dataset(tmp_path / "data", "kaggle")
    cfg = DataConfig(dataset=str(tmp_path / "data"), num_classes=len(TABLE), image_size=32, eval_size=64)
    cache = DataCache(tmp_path / "cache")
    cache.frame(cfg, cache.source(cfg)[0], (32, 48))  # the training frame, images and all

    def no_photo(*args, **kwargs):
        raise AssertionError("a photo decoded at the evaluation frame, where no model runs")

    monkeypatch.setattr(images_module, "decode_image", no_photo)
    data = cache.get(cfg, depth=3)
    assert tuple(data.images.shape[-2:]) == (32, 48) and data.scored_frame == (64, 96)
    # the masks themselves, resized from the originals (class 0 is ignored)
    expected = np.stack([nearest(truth[name], 64, 96) for name in sorted(truth)])
    assert ((data.eval_masks.numpy() == IGNORE) == (expected == 0)).all()
    assert (data.eval_masks.numpy()[expected != 0] == expected[expected != 0]).all()


@pytest.mark.parametrize("kind", ["png", "tif"])  # opened as I;16 and as I
def test_a_16_bit_grey_photo_is_scaled_not_clipped_white(tmp_path, kind):
    from unet_opt.core.data.images import decode_image, read_rgb

    grey = np.linspace(0, 65535, 48 * 72).reshape(48, 72).astype(np.uint16 if kind == "png" else np.int32)
    path = tmp_path / f"photo.{kind}"
    Image.fromarray(grey).save(path)
    expected = np.rint(grey / 257)
    for decoded in (decode_image(path, 48, 72), read_rgb(path)):  # training and `predict`
        assert decoded.dtype == np.uint8 and decoded.shape == (48, 72, 3)
        assert np.abs(decoded[..., 1].astype(int) - expected).max() <= 1 and decoded.std() > 50


def test_folders_that_cannot_be_read_twin_names_and_macos_files(tmp_path, monkeypatch):
    from pathlib import Path

    from unet_opt.core.data.layouts import find_source
    from unet_opt.errors import UserError

    make_dataset(tmp_path / "disk" / "drone", "kaggle", count=6)
    (tmp_path / "disk" / "lost+found").mkdir()  # root's, mode 700, on every ext4 disk
    (tmp_path / "disk" / "drone" / "original_images" / "._003.jpg").write_bytes(b"\0\5\26\7")  # macOS metadata
    is_dir, iterdir = Path.is_dir, Path.iterdir

    def is_dir_of_a_user(self):
        if "lost+found" in self.parts and self.name != "lost+found":
            raise PermissionError(13, "Permission denied", str(self))
        return is_dir(self)

    monkeypatch.setattr(Path, "is_dir", is_dir_of_a_user)
    source = find_source(tmp_path / "disk", len(TABLE))  # the unreadable folder beside the data is passed over
    assert [n for n, _, _ in source.pairs] == [f"{i:03d}" for i in range(6)]  # "._003" is no photo
    masks = tmp_path / "disk" / "drone" / "label_images_semantic"

    def unreadable_masks(self):
        if self == masks:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", unreadable_masks)
    with pytest.raises(UserError, match=f"folder {masks} cannot be read \\(permission denied\\); fix its permissions"):
        find_source(tmp_path / "disk", len(TABLE))
    monkeypatch.setattr(Path, "iterdir", iterdir)
    (masks.parent / "original_images" / "003.png").hardlink_to(masks.parent / "original_images" / "003.jpg")
    with pytest.raises(UserError, match="003.jpg and 003.png have one name, and photos pair with masks by name"):
        find_source(tmp_path / "disk", len(TABLE))


def test_two_data_sets_below_the_data_folder_are_not_guessed_between(tmp_path):
    from unet_opt.core.data.layouts import find_source
    from unet_opt.errors import UserError

    make_dataset(tmp_path / "two" / "x", "generic", count=6)
    make_dataset(tmp_path / "two" / "y", "kaggle", count=6)
    make_dataset(tmp_path / "two" / "y" / "deeper" / "z", "generic", count=6)  # a level further down: not a rival
    with pytest.raises(UserError, match=f"2 data sets below {tmp_path}/two: {tmp_path}/two/x \\(generic\\) and "
                                        f"{tmp_path}/two/y \\(kaggle\\); pass the one to use, e.g. --data "):
        find_source(tmp_path / "two", len(TABLE))
    assert find_source(tmp_path / "two" / "y", len(TABLE)).root == tmp_path / "two" / "y"


def test_a_class_table_above_the_images_is_found_as_kaggle_s_download_has_it(tmp_path):
    from unet_opt.core.data.classes import ClassTable
    from unet_opt.core.data.layouts import find_source

    root = tmp_path / "archive" / "dataset" / "semantic_drone_dataset"
    make_dataset(root, "kaggle", count=6)
    (root / "class_dict_seg.csv").unlink()
    five = ClassTable(("nothing", "street", "lawn", "house", "van"), TABLE.colors)
    write_table(tmp_path / "archive" / "class_dict_seg.csv", five)
    write_table(tmp_path / "class_dict_seg.csv")  # above --data: not this download's
    source = find_source(tmp_path / "archive", len(TABLE))
    assert source.root == root and source.table == tmp_path / "archive" / "class_dict_seg.csv"
    assert source.classes.names == five.names


def test_webp_and_gif_photos_are_photos(tmp_path):
    """Formats Pillow reads are photos like the others, not masks without an image."""
    truth = make_dataset(tmp_path / "data", "generic", count=6)
    photos = tmp_path / "data" / "images"
    for name, suffix in (("001", ".webp"), ("002", ".gif")):
        jpg = photos / f"{name}.jpg"
        Image.open(jpg).save(jpg.with_suffix(suffix), lossless=True) if suffix == ".webp" else \
            Image.open(jpg).save(jpg.with_suffix(suffix))
        jpg.unlink()
    cfg = DataConfig(dataset=str(tmp_path / "data"), num_classes=len(TABLE), ignore_index=-1, image_size=48)
    data = load_data(cfg, depth=3, cache_dir=tmp_path / "cache")
    assert data.names == sorted(truth)
    webp = np.asarray(Image.open(photos / "001.webp").convert("RGB"))
    assert np.array_equal(data.images[1].permute(1, 2, 0).numpy(), webp)


def own_class_0_folders(root):
    """Two folders alike but for their class 0: 'unlabeled' (the drone table's) and 'background'."""
    from unet_opt.core.data.classes import ClassTable

    make_dataset(root / "unl", "generic", count=8)
    make_dataset(root / "bg", "generic", count=8)
    write_table(root / "bg" / "classes.csv", ClassTable(("background", *TABLE.names[1:]), TABLE.colors))


def test_a_folder_s_own_class_0_to_learn_is_said_to_be_ignored_and_unlabeled_is_not(tmp_path, cli):
    own_class_0_folders(tmp_path)
    code, out, _ = cli("data", "check", str(tmp_path / "unl"))
    assert code == 0 and "unlabeled (ignored)" in out and "warning" not in out
    code, out, _ = cli("data", "check", str(tmp_path / "bg"))  # found by a review: nothing said so
    assert code == 0 and "background (ignored)" in out
    assert f"warning: class 0 of {tmp_path / 'bg' / 'classes.csv'}, 'background', is left out of training and of " \
           "every score, and never predicted (data.ignore_index = 0); if it is a class to learn, pass --set " \
           "data.ignore_index=-1" in out
    code, out, _ = cli("data", "check", str(tmp_path / "bg"), "--ignore-index", "-1")
    assert code == 0 and "(ignored)" not in out and "warning" not in out
    (tmp_path / "bg" / "classes.csv").unlink()  # index masks alone: their class 0 may be background (a review)
    code, out, _ = cli("data", "check", str(tmp_path / "bg"), "--num-classes", "5")
    assert code == 0 and "warning: the masks come without a class table, and their class 0 is left out of training " \
                         "and of every score, and never predicted (data.ignore_index = 0)" in out


def test_every_command_that_reads_a_folder_says_that_its_own_class_0_is_ignored(tmp_path, caplog):
    own_class_0_folders(tmp_path)
    for folder in ("bg", "unl"):
        load_data(DataConfig(dataset=str(tmp_path / folder), num_classes=5, image_size=32), 2, tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"class 0 of {tmp_path / 'bg' / 'classes.csv'}, 'background'")


def test_colour_masks_without_a_class_table_are_that_one_problem_in_data_check(tmp_path, cli):
    make_dataset(tmp_path / "d", "generic", count=8, colour=True)
    (tmp_path / "d" / "classes.csv").unlink()
    code, out, err = cli("data", "check", str(tmp_path / "d"))
    # found by a review: the drone table at 0 % and each mask's colours "not in the class table None"
    assert code == 2 and "unlabeled" not in out and "paved-area" not in out and "None" not in out
    assert [line for line in out.splitlines() if line.startswith("problem:")] == [
        f"problem: {tmp_path / 'd'} has colour masks but no class table; add classes.csv with rows name, r, g, b"]


def masks_saved_as_jpeg(folder, scale: int = 1) -> None:
    for png in sorted((folder / "masks").glob("*.png")):
        Image.fromarray(np.asarray(Image.open(png)) * scale).save(png.with_suffix(".jpg"), quality=90)
        png.unlink()


def test_jpeg_masks_are_named_as_lossy_wherever_the_folder_is_read(tmp_path, cli, caplog):
    # found by a review: JPEG noise along edges made classes 6 and 7 of a 5-class folder without a table
    # (the drone table's "rocks" and "pool"), and `data check` said "no problems found"
    make_dataset(tmp_path / "d", "generic", count=8)
    (tmp_path / "d" / "classes.csv").unlink()
    masks_saved_as_jpeg(tmp_path / "d")
    said = (f"8 of the 8 masks (e.g. {tmp_path / 'd' / 'masks' / '000.jpg'}) are JPEG files: JPEG is lossy and "
            "changes class ids where classes meet, into ids of other classes; save the masks as PNG from their source")
    load_data(DataConfig(dataset=str(tmp_path / "d"), image_size=32), 2, tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings[0] == said and warnings[1].startswith("the masks come without a class table") and len(warnings) == 2
    code, out, _ = cli("data", "check", str(tmp_path / "d"))
    assert f"warning: {said}" in out.splitlines()


def test_a_jpeg_mask_s_values_that_are_no_class_are_blamed_on_jpeg_and_no_table_shows_0_percent(tmp_path, cli):
    make_dataset(tmp_path / "d", "generic", count=8)
    masks_saved_as_jpeg(tmp_path / "d", scale=60)  # 0..240: most values are no class of the 5
    code, out, _ = cli("data", "check", str(tmp_path / "d"))
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert code == 2 and len(problems) == 8 and all(line.endswith(
        "; it is a JPEG, whose compression changes class ids where classes meet: save the masks as PNG")
        for line in problems), problems
    assert "%" not in out  # it printed every class at 0 %: no mask was decoded, so nothing is known of them


def test_grey_masks_with_an_alpha_band_are_their_grey_band(tmp_path):
    truth = make_dataset(tmp_path / "d", "generic", count=6)
    for png in (tmp_path / "d" / "masks").glob("*.png"):
        Image.open(png).convert("LA").save(png)  # "mask value 255 is not a class": the alpha band
    data = load_data(DataConfig(dataset=str(tmp_path / "d"), num_classes=len(TABLE), ignore_index=-1,
                                image_size=48), 3, tmp_path / "cache")
    assert all(np.array_equal(data.masks[i].numpy(), truth[name]) for i, name in enumerate(data.names))


def test_jfif_photos_are_photos_and_heic_ones_are_named_with_the_fix(tmp_path, cli):
    make_dataset(tmp_path / "d", "generic", count=8)
    photos = tmp_path / "d" / "images"
    (photos / "001.jpg").rename(photos / "001.jfif")
    (photos / "002.jpg").unlink()
    (photos / "002.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))  # its start
    code, out, _ = cli("data", "check", str(tmp_path / "d"))
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    # it said "masks/002.png has no image (no 002.* in images)", with the photo right there
    assert code == 2 and problems == [
        f"problem: {photos / '002.heic'} is a HEIC photo, which Pillow does not read; convert it to JPEG or PNG"]


def stored_sideways(photo: Path, saved_as: Path) -> None:
    """The photo as a phone stores a portrait: its pixels turned, and EXIF orientation 6 to turn them back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(photo).transpose(Image.Transpose.ROTATE_90).save(saved_as, exif=exif, quality=95)


def test_photos_stored_sideways_with_an_exif_orientation_are_read_as_viewers_show_them(tmp_path, cli):
    # found by a review: "img000.jpg is 64x96 but its mask is 96x64", and square photos trained turned
    make_dataset(tmp_path / "d", "generic", count=8)
    for jpg in (tmp_path / "d" / "images").glob("*.jpg"):
        Image.open(jpg).save(jpg.with_suffix(".png"))
        jpg.unlink()
    shutil.copytree(tmp_path / "d", tmp_path / "turned")
    for png in (tmp_path / "turned" / "images").glob("*.png"):
        stored_sideways(png, png)
    assert Image.open(tmp_path / "turned" / "images" / "000.png").size == (48, 72)
    code, out, _ = cli("data", "check", str(tmp_path / "turned"))
    assert code == 0 and "image sizes: 72x48 (8)" in out
    cfg = DataConfig(dataset=str(tmp_path / "d"), num_classes=len(TABLE), image_size=32)
    upright = load_data(cfg, 3, tmp_path / "cache")
    turned = load_data(replace(cfg, dataset=str(tmp_path / "turned")), 3, tmp_path / "cache")
    assert torch.equal(turned.images, upright.images) and torch.equal(turned.masks, upright.masks)


def test_a_large_jpeg_stored_sideways_is_decoded_upright_at_a_reduced_scale(tmp_path):
    from unet_opt.core.data.images import decode_image, read_rgb

    rng = np.random.default_rng(0)
    photo = np.kron(rng.integers(0, 256, (12, 18, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 480x720
    Image.fromarray(photo).save(tmp_path / "upright.jpg", quality=95)
    stored_sideways(tmp_path / "upright.jpg", tmp_path / "sideways.jpg")
    assert Image.open(tmp_path / "sideways.jpg").size == (480, 720)
    expected = decode_image(tmp_path / "upright.jpg", 48, 72).astype(int)
    assert np.abs(decode_image(tmp_path / "sideways.jpg", 48, 72).astype(int) - expected).mean() < 2
    assert read_rgb(tmp_path / "sideways.jpg").shape == (480, 720, 3)  # what `predict` reads and writes at
