"""The one check to run on a lent GPU machine (1 x H100/H200 or several): about 5 minutes, one table.

    python benchmarks/gpu_check.py > gpu_check.md                   # every visible GPU
    python benchmarks/gpu_check.py --device cpu --procs 2 --quick   # smoke run of the same path on a CPU

Progress goes to stderr; stdout gets one line naming the GPU(s), torch, CUDA and NCCL, then a markdown
table. Every training run goes through unet-opt's own `ranks.launch` and `train.fit` (one
process: in this one; several: one rank per GPU, DDP over NCCL, SyncBatchNorm) on synthetic 256x384
frames (tiled from 32 generated scenes: generating one costs ~30 ms of CPU in every rank), crop
augmentation, UNet base 64 depth 4, 16 images per GPU per step, 320 per GPU per epoch, 5 epochs, bf16
autocast, channels_last and the data set on the GPU unless a row says otherwise (each size has its
option, see --help). images/s = median of the epochs after the first (the first pays for cuDNN
autotuning, or compilation). The rows:

1. images/s on 1, 2, ..., N GPUs (N: all visible, or --gpus N), weak scaling (batch and data set grow
   with the GPU count, so every run does the same steps per epoch); efficiency = images/s on n /
   (n x images/s on 1), target >= 0.90.
2. bf16 autocast against float32 (amp off; cuDNN may use TF32, PyTorch's default), 1 GPU: images/s, speed-up.
3. channels_last against the default memory layout, both bf16, 1 GPU.
4. the data set held on the GPU (what `DataCache.placed` does when it fits) against pinned host memory.
5. torch.compile against eager, 1 GPU; then its compile time = first epoch - median later epoch.
6. the crop augmentation's share of a training step: `data.batches` with augment "crop" minus "none",
   per batch, on data already on the device (synchronised), over the step time of row 1's 1-GPU run.
7. peak GPU memory of row 1's 1-GPU run (`FitResult.peak_memory_mb`) against the GPU's total.
8. a 10-trial `unet-opt search --device cuda --gpus 1` of benchmarks/overhead.py's tiny trials (batch 4)
   in a new folder:
   wall time, per-trial overhead ((wall - before the first trial - epochs) / trials), time before
   the first trial.

With --device cpu, rows 2-5 and 7 say "needs CUDA" and the others run on CPU processes (gloo). A row
whose run fails shows its error's one line as its value, and the script goes on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import median

import torch
from overhead import search  # benchmarks/overhead.py: this script's folder is on sys.path

from unet_opt import runtime
from unet_opt.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.core.data import DataCache, SegmentationData, batches, frame_size, load_data
from unet_opt.core.train import FitJob, fit
from unet_opt.errors import UserError
from unet_opt.parallel.placement import Placement, plan
from unet_opt.parallel.ranks import launch

FULL = dict(image_size=256, base_channels=64, depth=4, batch_per_gpu=16, images_per_gpu=320, epochs=5, trials=10)
QUICK = dict(image_size=64, base_channels=16, depth=3, batch_per_gpu=4, images_per_gpu=32, epochs=3, trials=3)
SCENES = 32  # distinct generated scenes, tiled up to the data set's size


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class NeedsCuda(Exception):
    """What a row shows where it measures something that only exists on a GPU."""


def one_line(e: BaseException) -> str:
    """An error as one table cell: a failed command's last stderr line, else the type and first line."""
    if isinstance(e, NeedsCuda):
        return "needs CUDA"
    if isinstance(e, subprocess.CalledProcessError) and e.stderr:
        text = e.stderr.decode(errors="replace").strip().splitlines()[-1]
    else:
        text = f"{type(e).__name__}: {next(iter(str(e).strip().splitlines()), '')}"
    return "error: " + text.replace("|", "/")[:200]


def attempt(fn, *args, **kwargs):
    """fn's result, or the exception it raised (logged): one failed run does not end the script."""
    try:
        return fn(*args, **kwargs)
    except (Exception, SystemExit) as e:  # overhead.search exits on a short study
        log(f"    failed: {one_line(e)}")
        return e


def ok(result):
    """A result of `attempt`, or its exception raised again (so that each row using it reports it)."""
    if isinstance(result, BaseException):
        raise result
    return result


_data: dict[tuple, SegmentationData] = {}  # this process's data set, kept for its next runs


def dataset(cfg: Config, images: int) -> SegmentationData:
    key = (repr(cfg.data), cfg.model.depth, images)
    if key not in _data:
        _data.clear()
        base = load_data(replace(cfg.data, synthetic_images=min(images, SCENES)), cfg.model.depth)
        reps = -(-images // len(base.names))
        _data[key] = SegmentationData(base.images.repeat(reps, 1, 1, 1)[:images], base.masks.repeat(reps, 1, 1)[:images],
                                      [f"{i:05d}" for i in range(images)], base.classes, base.binary)
    return _data[key]


PINNED = {"on": False}  # row 4: the 1-process run (in this process) keeps its data in pinned host memory


def train_on_rank(group, job: FitJob, cache: DataCache, on_epoch, on_step=None):
    """What every rank runs (a `Fit`, sent by name to rank processes): `fit` on its copy of the data, placed
    as unet-opt places it (on the GPU when it fits), or pinned for row 4."""
    data = dataset(job.cfg, len(job.split["train"]) + len(job.split["val"]))
    data = data.pinned() if PINNED["on"] else cache.placed(data, group.device)
    return fit(job.cfg, data, job.split, on_epoch=on_epoch, on_step=on_step, group=group)


def setup(args: argparse.Namespace, n: int, **options) -> tuple[Config, dict[str, list[int]], int]:
    """(config, split, data set size) of a run on n devices: n x images_per_gpu to train, one global batch
    to validate. `options`: TrainConfig fields (amp, channels_last, compile)."""
    batch, train_images = args.batch_per_gpu * n, args.images_per_gpu * n
    cfg = Config(data=DataConfig(dataset="synthetic", image_size=args.image_size, augment="crop"),
                 model=ModelConfig(base_channels=args.base_channels, depth=args.depth),
                 train=TrainConfig(lr=1e-3, batch_size=batch, epochs=args.epochs, patience=args.epochs,
                                   device=args.device, **options))
    split = {"train": list(range(train_images)), "val": list(range(train_images, train_images + batch))}
    return cfg, split, train_images + batch


def placement_of(args: argparse.Namespace, n: int) -> Placement:
    return plan("cuda", str(n), None) if args.device == "cuda" else plan("cpu", None, n)


def train(args: argparse.Namespace, n: int, pinned: bool = False, **options) -> dict[str, float]:
    """One run on n devices: median images/s and epoch seconds after the first, the first's, peak MiB."""
    cfg, split, _ = setup(args, n, **options)
    placement = placement_of(args, n)
    changes = [f"{k}={v}" for k, v in options.items()] + ["data in pinned host memory"] * pinned
    log(f"  {placement.describe()}{': ' * bool(changes)}{', '.join(changes)}")
    history: list[dict[str, float]] = []

    def on_epoch(epoch: int, metrics: dict[str, float], best: float) -> bool:
        history.append(metrics)
        log(f"    epoch {epoch}: {metrics['images_per_second']:8.1f} images/s  ({metrics['epoch_seconds']:.1f} s)")
        return False

    PINNED["on"] = pinned  # with one process `launch` runs the fit here, where this flag is seen
    try:
        result = launch(placement, train_on_rank, FitJob(cfg, split), on_epoch, DataCache(None))
    finally:
        PINNED["on"] = False
    later = history[1:] or history
    return {"speed": median(m["images_per_second"] for m in later), "first": history[0]["epoch_seconds"],
            "later": median(m["epoch_seconds"] for m in later), "peak": result.peak_memory_mb}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def augment_cost(args: argparse.Namespace, pairs: int = 5) -> float:
    """Seconds the crop augmentation adds to one batch of the 1-device run: an epoch of `batches` with
    "crop" minus one with "none", alternating, median of `pairs`, over the batches of an epoch."""
    cfg, split, images = setup(args, 1)
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    data = DataCache(None).placed(dataset(cfg, images), device)  # as the 1-GPU runs trained on it

    def epoch(kind: str) -> float:
        generator = torch.Generator().manual_seed(0)
        sync(device)
        start = time.perf_counter()
        for _ in batches(data, split["train"], args.batch_per_gpu, shuffle=True, augment=kind,
                         generator=generator, drop_last=True):
            pass
        sync(device)
        return time.perf_counter() - start

    epoch("crop")  # warm-up
    epoch("none")
    extra = median(epoch("crop") - epoch("none") for _ in range(pairs))
    return extra / (len(split["train"]) // args.batch_per_gpu)


def tiny_search(args: argparse.Namespace) -> dict[str, float]:
    """overhead.py's tiny trials on one device (their batch of 4 would not split over 3 or 8 GPUs)."""
    where = ["--device", args.device, *(["--gpus", "1"] if args.device == "cuda" else [])]
    log(f"  unet-opt search --trials {args.trials} {' '.join(where)} (overhead.py's tiny trials)")
    with tempfile.TemporaryDirectory(prefix="unet-opt-gpu-check-") as tmp:
        return search(Path(tmp) / "search", args.trials, *where)


def speed(run) -> float:
    return ok(run)["speed"]


def scaling(n: int, run, base) -> tuple[str, str]:
    if n == 1:
        return f"{speed(run):.1f}", "reference"
    efficiency = speed(run) / (n * speed(base))
    verdict = ("SUSPECT: above 1, the 1-process run was slowed by something else" if efficiency > 1.05
               else "meets 0.90" if efficiency >= 0.9 else "BELOW 0.90")
    return f"{speed(run):.1f}", f"efficiency {efficiency:.2f} ({verdict})"


def versus(a, b) -> tuple[str, str]:
    return f"{speed(a):.1f} / {speed(b):.1f} images/s", f"{speed(a) / speed(b):.2f}x"


def compile_time(run) -> tuple[str, str]:
    return f"{ok(run)['first'] - ok(run)['later']:.1f} s", ""


def augment_share(cost, base, batch: int) -> tuple[str, str]:
    step = batch / speed(base)
    return f"{ok(cost) * 1000:.2f} ms of a {step * 1000:.1f} ms step", f"{ok(cost) / step:.2%}"


def memory(base, total) -> tuple[str, str]:
    return f"{ok(base)['peak']:.0f} MiB", f"{ok(base)['peak'] / ok(total):.1%} of {ok(total):.0f} MiB"


def search_cells(result) -> tuple[str, str]:
    r = ok(result)
    return f"{r['wall']:.1f} s wall", f"{r['per_trial']:.2f} s overhead per trial, {r['before']:.1f} s before trial 0"


def machine(full: Placement) -> str:
    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:
        nccl = "none"
    if full.device == "cuda":
        names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in full.gpu_ids}))
        where = f"{full.procs} x {names}"
    else:
        where = f"no GPU: CPU ({os.cpu_count()} cores), up to {full.procs} processes"
    return f"{where}; torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, NCCL {nccl}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--gpus", help="GPUs to scale to: all (default) or N")
    parser.add_argument("--procs", type=int, help="CPU processes to scale to with --device cpu (default 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and epochs: a smoke run")
    for name, default in FULL.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int,
                            help=f"default {default} ({QUICK[name]} with --quick)")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        full = plan(args.device, args.gpus, args.procs or (2 if args.device == "cpu" else None))
    except UserError as e:
        parser.error(str(e))
    args.device, cuda, started = full.device, full.device == "cuda", time.perf_counter()
    unit = "GPU" if cuda else "process"
    runtime.setup_torch()  # as a search's process does: cuDNN autotuning (the rank processes set their own)

    log("scaling, bf16 and channels_last on CUDA:")
    runs = {n: attempt(train, args, n) for n in range(1, full.procs + 1)}
    base, skip = runs[1], NeedsCuda()
    if cuda:
        log("1 GPU, float32 / default layout / pinned host memory / torch.compile:")
    fp32 = attempt(train, args, 1, amp=False) if cuda else skip
    plain = attempt(train, args, 1, channels_last=False) if cuda else skip
    pinned = attempt(train, args, 1, pinned=True) if cuda else skip
    compiled = attempt(train, args, 1, compile=True) if cuda else skip
    log("augmentation, crop against none:")
    augment = attempt(augment_cost, args)
    searched = attempt(tiny_search, args)

    rows: list[tuple[str, str, str, str]] = []

    def row(what: str, setting: str, cells, *results) -> None:
        """cells(*results) -> (value, ratio); a failed run's error, in one line, as the value."""
        try:
            if any(isinstance(r, NeedsCuda) for r in results):
                raise NeedsCuda
            value, ratio = cells(*results)
        except Exception as e:
            value, ratio = one_line(e), ""
        rows.append((what, setting, value, ratio))

    height, width = frame_size(DataConfig(image_size=args.image_size), args.depth)
    for n, run in runs.items():
        setting = (f"UNet base {args.base_channels} depth {args.depth}, {height}x{width}, crop, "
                   f"{'bf16, channels_last, ' * cuda}"
                   f"{args.batch_per_gpu}/{unit}, {args.images_per_gpu}/{unit} per epoch" if n == 1 else
                   f"global batch {args.batch_per_gpu * n}")
        row(f"images/s, {n} {unit}{('s' if cuda else 'es') if n > 1 else ''}", setting, scaling, n, run, base)
    row("bf16 autocast / float32", "1 GPU, channels_last", versus, base, fp32)
    row("channels_last / default layout", "1 GPU, bf16", versus, base, plain)
    row("data on the GPU / pinned host memory", "1 GPU, bf16, channels_last", versus, base, pinned)
    row("torch.compile / eager", "1 GPU, bf16, channels_last", versus, compiled, base)
    row("torch.compile: compile time", "first epoch - median later epoch", compile_time, compiled)
    row("crop augmentation's share of a step",
        f"1 {unit}, batch {args.batch_per_gpu}, data on the {'GPU' if cuda else 'CPU'}",
        augment_share, augment, base, args.batch_per_gpu)
    total = torch.cuda.get_device_properties(0).total_memory / 2**20 if cuda else skip
    row("peak GPU memory, 1 GPU", f"batch {args.batch_per_gpu}, bf16, channels_last", memory, base, total)
    row(f"{args.trials}-trial `unet-opt search`", f"--device {args.device}{' --gpus 1' * cuda}, overhead.py's tiny trials",
        search_cells, searched)

    log(f"done in {time.perf_counter() - started:.0f} s")
    print(machine(full))
    print("\n| what | setting | value | ratio / verdict |\n| --- | --- | --- | --- |")
    for cells in rows:
        print(f"| {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
