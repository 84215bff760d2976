"""The cost of one ruler: scoring every trial at the study's evaluation frame, and at the photos' own size.

1. Validation at the evaluation frame against validation at the trial's own frame, as a share of an epoch
   (training on the train split + validation on the val split): the quick start's sizes (32 and 48 px
   scored at 64 px) on the embedded data, and a data folder of photos trained at 64 px, scored at 96 px.
   Validation at each frame alternates with the other, 10 times, medians: the machine's load drifts.
2. `unet-opt evaluate --frame native` on a folder of 1500x1000 photos: seconds per photo and the
   command's peak memory (its own ru_maxrss), for a quarter of the photos and for all of them. Memory
   is bounded when the two are close: one photo is scored at a time, its logits resized a band at a time.

    python benchmarks/ruler.py [--photos 200] [--skip-native]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import median

import torch

from unet_opt.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.core.data import load_data, make_split, split_indices
from unet_opt.core.model import build_model
from unet_opt.core.scoring import loss_and_matrix
from unet_opt.core.train import fit

sys.path.insert(0, str(Path(__file__).parent))
from data import write_photos  # noqa: E402  (benchmarks/data.py: generated photos in the Kaggle layout)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def validation_share(data_cfg: DataConfig, eval_size: int, depth: int, cache: Path | None, batch: int = 8) -> dict:
    """Seconds of one training epoch, and of validation at the trial's frame and at `eval_size`."""
    own = load_data(replace(data_cfg, eval_size=-1), depth, cache)
    scored = load_data(replace(data_cfg, eval_size=eval_size), depth, cache)
    split = split_indices(make_split(own.names, 0.15, 0.15, 42), own.names)
    cfg = Config(data=data_cfg, model=ModelConfig(base_channels=16, depth=depth),
                 train=TrainConfig(batch_size=batch, epochs=2, patience=9))
    train = [timed(lambda: fit(cfg, own, {"train": split["train"], "val": []})) / 2 for _ in range(2)]
    model = build_model(cfg.model, own.num_classes)
    at_own, at_eval = [], []
    for _ in range(10):
        at_own.append(timed(lambda: loss_and_matrix(model, own, split["val"], batch)))
        at_eval.append(timed(lambda: loss_and_matrix(model, scored, split["val"], batch)))
    epoch = min(train)
    return {"frame": f"{own.images.shape[-2]}x{own.images.shape[-1]}",
            "scored": f"{scored.scored_frame[0]}x{scored.scored_frame[1]}", "train": epoch,
            "own": median(at_own), "eval": median(at_eval), "images": (len(split["train"]), len(split["val"]))}


def share_row(label: str, r: dict) -> str:
    own, scored = r["own"] / (r["train"] + r["own"]), r["eval"] / (r["train"] + r["eval"])
    return (f"| {label} | {r['frame']} -> {r['scored']} | {r['train']:.2f} s | {r['own'] * 1000:.0f} ms | "
            f"{r['eval'] * 1000:.0f} ms | {100 * own:.1f}% | {100 * scored:.1f}% | "
            f"{100 * (r['eval'] - r['own']) / (r['train'] + r['own']):+.1f}% |")


def native_run(folder: Path, checkpoint: Path, home: Path, photos: int) -> tuple[float, float]:
    """(seconds per photo, peak MB) of `unet-opt evaluate --frame native` on the first `photos` photos."""
    subset = home / f"photos-{photos}"
    for part in ("original_images", "label_images_semantic"):
        (subset / part).mkdir(parents=True)
        for path in sorted((folder / part).iterdir())[:photos]:
            (subset / part / path.name).symlink_to(path)
    (subset / "class_dict_seg.csv").symlink_to(folder / "class_dict_seg.csv")
    code = ("import atexit, resource, sys\n"
            "atexit.register(lambda: print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
            "from unet_opt.cli.app import main\n"
            f"main(['--home', {str(home)!r}, 'evaluate', {str(checkpoint)!r}, '--frame', 'native', '--split', 'all',"
            f" '--data', {str(subset)!r}, '--out', {str(home / f'out-{photos}')!r}])\n")
    # the cache at the model's frame is filled first, so that the timed run scores and does nothing else
    subprocess.run([sys.executable, "-c", code.replace("'native'", "'eval'").replace("out-", "warm-")],
                   check=True, capture_output=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    seconds = (time.perf_counter() - start) / photos
    peak = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("peak_kb")))
    return seconds, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200, help="photos of 1500x1000 for the native evaluation")
    parser.add_argument("--skip-native", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"one ruler: {torch.get_num_threads()} threads, UNet base 16, batch 8")
    print("| data | training frame -> evaluation frame | training epoch | validation at its own frame | "
          "validation at the evaluation frame | share of the epoch, own frame | share, evaluation frame | "
          "cost of the ruler |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in (32, 48):
        r = validation_share(DataConfig(image_size=size, augment="flip"), 64, 3, None)
        print(share_row(f"embedded, {r['images'][0]} train / {r['images'][1]} val images", r), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder, home = Path(tmp) / "photos", Path(tmp) / "home"
        write_photos(folder, max(args.photos, 120), 0)
        r = validation_share(DataConfig(dataset=str(folder), image_size=64, augment="flip"), 96, 4,
                             home / "studies" / "cache")
        print(share_row("data folder, 1500x1000 photos", r), flush=True)
        if args.skip_native:
            return
        from unet_opt.runs.checkpoint import save_checkpoint

        cfg = Config(data=DataConfig(dataset=str(folder), image_size=64), model=ModelConfig(base_channels=16, depth=4))
        data = load_data(cfg.data, 4, home / "studies" / "cache")
        checkpoint = home / "model.pt"
        save_checkpoint(checkpoint, build_model(cfg.model, data.num_classes), cfg, data.classes, False,
                        {"train": data.names, "val": [], "test": []})
        print("\n| `evaluate --frame native`, 1500x1000 photos, model at 64x96 | seconds per photo | peak memory |")
        print("| --- | --- | --- |")
        for photos in (args.photos // 4, args.photos):
            seconds, peak = native_run(folder, checkpoint, home, photos)
            print(f"| {photos} photos | {seconds:.2f} s | {peak:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
