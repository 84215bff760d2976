"""Scaling check for a GPU machine: one trial's epochs on 1 GPU and on all GPUs, through unet-opt's own
`distributed.launch` and `train.fit` (DDP over NCCL, SyncBatchNorm, bf16 autocast, channels_last).

Weak scaling: each GPU takes `--batch-per-gpu` images per step, so the global batch grows with the GPU
count, as does the data set (`--images-per-gpu`), and every run does the same number of steps per
epoch. Prints images/s (median of the epochs after the first, which pays for cuDNN autotuning) and the
scaling efficiency = images/s on N GPUs / (N x images/s on 1 GPU). Target: at least 0.90.

    python benchmarks/gpu_check.py [--image-size 256] [--batch-per-gpu 16] [--epochs 4]
    python benchmarks/gpu_check.py --device cpu --procs 2      # the same path on CPU processes (gloo)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unet_opt.config import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.data import make_split, split_indices
from unet_opt.distributed import Placement, launch, plan
from unet_opt.train import fit_on_ranks


def measure(placement: Placement, args: argparse.Namespace) -> tuple[float, float, int]:
    """(median images/s of epochs 2.., seconds for the whole trial incl. process start, global batch)."""
    batch = args.batch_per_gpu * placement.procs
    images = args.images_per_gpu * placement.procs
    cfg = Config(
        data=DataConfig(dataset="synthetic", synthetic_images=images, image_size=args.image_size,
                        augment="flip", val_fraction=0.05, test_fraction=0.05),
        model=ModelConfig(base_channels=args.base_channels, depth=args.depth),
        train=TrainConfig(lr=1e-3, batch_size=batch, epochs=args.epochs, patience=args.epochs,
                          device=placement.device, amp=True, channels_last=True))
    names = [f"{i:05d}" for i in range(images)]
    split = split_indices(make_split(names, 0.05, 0.05, 0), names)
    speeds: list[float] = []

    def on_epoch(epoch: int, metrics: dict[str, float], best: float) -> bool:
        speeds.append(metrics["images_per_second"])
        print(f"    epoch {epoch}: {metrics['images_per_second']:8.1f} images/s  ({metrics['epoch_seconds']:.1f} s)")
        return False

    start = time.perf_counter()
    launch(placement, fit_on_ranks, (cfg, split, None, None), on_epoch)
    return statistics.median(speeds[1:] or speeds), time.perf_counter() - start, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--procs", type=int, help="CPU processes for --device cpu (default 2)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-per-gpu", type=int, default=16)
    parser.add_argument("--images-per-gpu", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    full = plan(args.device, None, args.procs or (2 if args.device == "cpu" else None))
    if full.device == "cuda":
        names = {torch.cuda.get_device_name(i) for i in full.gpu_ids}
        print(f"{full.procs} x {', '.join(names)}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
    one = Placement(full.device, 1, full.gpu_ids[:1])
    rows = []
    for placement in ([one, full] if full.procs > 1 else [one]):
        print(f"  {placement.describe()}:")
        speed, seconds, batch = measure(placement, args)
        rows.append((placement.procs, batch, speed, seconds))
    base = rows[0][2]
    print(f"\nUNet base {args.base_channels} depth {args.depth}, height {args.image_size}, "
          f"{args.batch_per_gpu} images per {'GPU' if full.device == 'cuda' else 'process'} per step, "
          f"bf16 autocast and channels_last on CUDA")
    print(f"{'procs':>5} {'global batch':>12} {'images/s':>9} {'efficiency':>10} {'trial s':>8}")
    for procs, batch, speed, seconds in rows:
        print(f"{procs:5d} {batch:12d} {speed:9.1f} {speed / (procs * base):10.2f} {seconds:8.1f}")


if __name__ == "__main__":
    main()
