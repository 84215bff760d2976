"""Using a trained model: find it (checkpoint file, models:/ URI, run), evaluate it, predict with it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from unet_opt.config.paths import sqlite_file
from unet_opt.config.schema import Config
from unet_opt.core.data import frame_size, ignored_class, load_data, split_indices
from unet_opt.core.data.images import read_rgb, resize_rgb, write_png
from unet_opt.core.data.layouts import find_source, problems_error, scan
from unet_opt.core.metrics import per_class, scores_from_matrix
from unet_opt.core.native import classes_at, native_loss_and_matrix
from unet_opt.core.scoring import split_metrics
from unet_opt.errors import UserError
from unet_opt.runs.checkpoint import ARTIFACT, Checkpoint, load_checkpoint
from unet_opt.tracking import plots
from unet_opt.tracking.report_files import write_confusion_csv, write_per_class_csv


def resolve_model(ref: str, tracking_uri: str, artifact_root: Path) -> Checkpoint:
    """A checkpoint path, `models:/name@alias`, `runs:/RUN_ID` or a run id."""
    if Path(ref).is_file():
        return load_checkpoint(Path(ref))
    if not ref.startswith(("models:/", "runs:/")) and (Path(ref).suffix or "/" in ref):
        raise UserError(f"model file {ref} does not exist; pass a checkpoint file, models:/NAME@ALIAS or a run id")
    database = sqlite_file(tracking_uri)
    if database and not database.is_file():
        raise UserError(f"no MLflow store at {database} to find '{ref}' in; run "
                        f"`unet-opt retrain --best` here first, or pass --home / --tracking-uri")
    from unet_opt.tracking.tracker import download, point_at_own_folder, run_id_of  # MLflow only when a URI must be resolved

    run_id = run_id_of(ref, tracking_uri)
    point_at_own_folder(tracking_uri, artifact_root)  # once the model is known to be there: a bad name writes nothing
    with tempfile.TemporaryDirectory() as tmp:
        return load_checkpoint(download(run_id, ARTIFACT, tracking_uri, Path(tmp)))


@dataclass
class Evaluation:
    """A model's scores on one split: overall metrics, one row per class present, the files written."""

    metrics: dict[str, float]
    per_class: list[dict[str, float | str]]
    written: list[Path]
    frame: str  # where it was scored: "64x96 (...)" or "each photo's own size"
    caution: str = ""  # said before the scores: e.g. they are of images the model learned from


EVALUATION_FILES = ("confusion_matrix.png", "confusion_matrix.csv", "per_class.csv")
FRAMES = ("eval", "native")


def check_frame(ck: Checkpoint, dataset: str | None, frame: str) -> Config:
    """The config a model is evaluated with (on `dataset` when given), once `frame` is known to apply to it
    and a `dataset` folder to hold a data set (before `--out` is checked: the folder is what was mistyped)."""
    cfg = ck.cfg.replace({"data.dataset": dataset}) if dataset else ck.cfg
    if frame == "native" and cfg.data.dataset == "synthetic":
        raise UserError("--frame native scores against the photos' own masks, and the synthetic data set has "
                        "none; pass --data FOLDER, or leave --frame at eval")
    if dataset and cfg.data.dataset != "synthetic":
        folder, classes = Path(cfg.data.dataset).expanduser(), cfg.data.num_classes
        source, problems = scan(folder, None)  # its own class count: a model's classes are not a setting to change
        if source is not None and source.table is not None and len(source.classes) != classes:
            raise UserError(f"this model predicts {classes} classes and {source.table} has "
                            f"{len(source.classes)}; evaluate it on data labelled with its {classes} classes")
        if problems:
            raise problems_error(folder, problems)
    return cfg


def evaluate_checkpoint(ck: Checkpoint, cache_dir: Path, out: Path, split: str = "test",
                        dataset: str | None = None, frame: str = "eval", model: str = "") -> Evaluation:
    """Score the model on one split of its data (or of another folder) and write the confusion matrix
    (PNG and CSV) and the per-class table into `out` (checked with `check_outputs` beforehand).

    `frame` "eval": at the frame the model was judged at (its study's evaluation frame), as its run
    logged it; "native": each photo at its own size, against its original mask. `model`: as the user named it,
    for the matrix's title."""
    cfg = check_frame(ck, dataset, frame)
    data_cfg = cfg.data if frame == "eval" else replace(cfg.data, eval_size=-1)  # native: images at the model's frame
    data = load_data(data_cfg, cfg.model.depth, cache_dir)
    if split == "all":
        indices = list(range(len(data.names)))
    else:
        indices = split_indices(ck.split, data.names, "pass --split all to score every image of other data")[split]
    if frame == "native":
        source = find_source(Path(cfg.data.dataset).expanduser(), cfg.data.num_classes)
        loss, matrix = native_loss_and_matrix(ck.model, data, indices, source, cfg.data)
        scores = scores_from_matrix(matrix, data.binary)
        metrics = {f"{split}_loss": loss, **{f"{split}_{k}": v for k, v in scores.items()}}
        where = at = "each photo's own size"
    else:
        metrics, matrix = split_metrics(ck.model, data, indices, cfg.train, prefix=f"{split}_")  # as retrain logs them
        h, w = data.scored_frame
        judged = "its own training frame" if cfg.data.eval_size < 0 else "the evaluation frame it was judged at"
        if dataset:  # data passed again may have another aspect: the height is the model's, the width the data's
            judged = f"{'its training' if cfg.data.eval_size < 0 else 'its evaluation'} frame's height, " \
                     "at this data's aspect"
        where, at = f"{h}x{w} ({judged})", f"{h}x{w}"
    names = list(data.classes.names)
    pc = per_class(matrix)
    rows = [{"class": n, "dice": pc["dice"][i], "iou": pc["iou"][i], "precision": pc["precision"][i],
             "recall": pc["recall"][i], "pixels": int(pc["support"][i])} for i, n in enumerate(names) if pc["present"][i]]
    make_out_folder(out)
    written = [out / name for name in EVALUATION_FILES]
    plots.confusion_matrix(matrix, names, written[0], plots.matrix_title(split, run=model, frame=at))  # no epoch kept
    write_confusion_csv(matrix, names, written[1])
    write_per_class_csv(matrix, names, written[2])
    return Evaluation({"images": len(indices), **metrics}, rows, written, where,
                      learned_caution(ck, split, {data.names[i] for i in indices}))


def learned_caution(ck: Checkpoint, split: str, scored: set[str]) -> str:
    """What to say before scores of images the model learned from, by their names: so also on the study's
    own data passed again with --data (after a move), and never on other data."""
    learned = [s for s in ck.trained_on if scored & set(ck.split.get(s, []))]
    if not learned:
        return ""
    return (f"this model learned from the {' + '.join(learned)} split{'s' if len(learned) > 1 else ''} (it trained on "
            f"{' + '.join(ck.trained_on)}): its {'scores over all images' if split == 'all' else split + ' scores'} "
            f"are not held out; the test split's are (--split test)")


def prediction_files(image: Path, out_dir: Path) -> list[Path]:
    return [out_dir / f"{image.stem}_{kind}.png" for kind in ("mask", "color", "overlay")]


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Outputs never collide, never silently replace a file, and have a folder they can be written to:
    checked before anything is written (or a model loaded, or an image scored)."""
    there = paths[0].parent
    while not there.exists() and there != there.parent:  # the part of --out that exists already
        if there.is_symlink():
            raise UserError(f"{there} is a link to {there.readlink()}, which does not exist; pass another --out folder")
        there = there.parent
    if not there.is_dir():
        raise UserError(f"{there} is a file, not a folder; pass another --out folder")
    try:  # by writing: permissions alone say yes to root, and /sys or a read-only mount still refuse
        with tempfile.TemporaryFile(dir=there):
            pass
    except OSError as e:
        raise UserError(f"cannot write in {there} ({e.strerror}); pass another --out folder") from None
    seen: set[Path] = set()
    for path in paths:
        if path in seen:
            raise UserError(f"two inputs would both write {path} (same file name); predict them in separate "
                            f"runs with different --out folders, or rename one")
        seen.add(path)
        if path.exists() and not overwrite:
            raise UserError(f"{path} exists already; pass --overwrite to replace it, or another --out folder")


def make_out_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # what `check_outputs` cannot see coming (/proc, a full disk)
        raise UserError(f"cannot make the folder {out} ({e.strerror}); pass another --out folder") from None


@torch.inference_mode()
def predict_image(ck: Checkpoint, path: Path, out_dir: Path) -> list[Path]:
    """Class-index mask, colour mask and overlay PNGs at the image's own resolution."""
    image = read_rgb(path)
    h, w = image.shape[:2]
    height, width = frame_size(ck.cfg.data, ck.cfg.model.depth, aspect=w / h)  # this image's own aspect
    x = torch.from_numpy(resize_rgb(image, height, width)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    # the logits resized to the photo, then their classes: as `evaluate --frame native` scores them
    ignored = ignored_class(ck.cfg.data.ignore_index, len(ck.classes), ck.binary)
    mask = classes_at(ck.model.eval()(x).float(), h, w, ck.binary, ignored)
    colour = plots.colorize(mask, list(ck.classes.colors))
    make_out_folder(out_dir)
    written = prediction_files(path, out_dir)
    write_png(written[0], mask)
    write_png(written[1], colour)
    write_png(written[2], overlay(image, colour))
    return written


def overlay(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The photo and its colour mask, half each. In 16-bit integers: float arithmetic took 24 bytes a pixel
    and channel (an 11000x9000 photo peaked at 6 GB), this takes 4."""
    total = image.astype(np.uint16)
    total += colour
    total //= 2
    return total.astype(np.uint8)
