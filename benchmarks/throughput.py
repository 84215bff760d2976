"""Training throughput: unet-opt's own epoch against a bare PyTorch loop, measured in one run.

(a) the limit: forward/backward/step of the same UNet over batches already in memory, nothing else;
(b) unet-opt: the training phase of `train.fit`'s epochs on the same images, size and batch: cached
    uint8 tensors, shuffling, batching, the default augmentation (random resized crop, then flips),
    the loss accumulated on the device (the images/s that fit reports; validation, with its
    confusion matrix, is excluded from both).
The two alternate: after each of unet-opt's epochs, the bare loop runs as many steps, so that the
load of a shared machine, which drifts over seconds, weighs on both alike; the figures are the
medians over the pairs. Prints images/s for both, the ratio b/a (median of the pairs' ratios, with
their range), and the achieved GFLOP/s against a measured matmul peak.

    python benchmarks/throughput.py [--device cpu|cuda] [--image-size 64] [--batch-size 8] [--images 96]
        [--augment crop|flip|none]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from statistics import median

import torch
from torch.utils.flop_counter import FlopCounterMode

from unet_opt.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.core.data import load_data
from unet_opt.core.group import Group
from unet_opt.core.losses import segmentation_loss
from unet_opt.core.model import build_model
from unet_opt.core.train import autocast, fit


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a square matrix multiply: the machine's practical peak for dense math."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def train_flops_per_image(model: torch.nn.Module, shape: tuple[int, ...], classes: int) -> float:
    x = torch.randn(*shape)
    y = torch.randint(0, classes, (shape[0], *shape[2:]))
    with FlopCounterMode(display=False) as counter:
        segmentation_loss(model(x), y, False).backward()
    model.zero_grad()
    return counter.get_total_flops() / shape[0]


def bare_loop(model, optimizer, x, y, steps, device, cfg, warm_up: int = 0) -> float:
    """images/s of forward + backward + step on one batch already on the device."""

    def step() -> None:
        with autocast(device, cfg):
            loss = segmentation_loss(model(x).float(), y, False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warm_up):  # allocator, cuDNN autotuning
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=96, help="training images per epoch")
    parser.add_argument("--augment", default=DataConfig.augment, choices=("none", "flip", "crop"))
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=11,
                        help="unet-opt epochs; the first warms up, each later one makes a pair with the bare loop")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first one only warms up")
    device = torch.device(args.device)
    model_cfg = ModelConfig(base_channels=args.base_channels, depth=3)
    cfg = TrainConfig(lr=1e-3, batch_size=args.batch_size, epochs=args.epochs, patience=99, device=args.device)

    # the data set: synthetic scenes, decoded once, kept as uint8 tensors (as in a search)
    n_total = round(args.images / 0.7) + 2
    data = load_data(DataConfig(image_size=args.image_size, synthetic_images=n_total), model_cfg.depth)
    train_idx = list(range(args.images))
    split = {"train": train_idx, "val": list(range(args.images, n_total))}
    h, w = data.images.shape[-2:]

    # (a) the bare loop on the same model, size and batch, warmed up before the pairs start
    torch.manual_seed(0)
    model = build_model(model_cfg, data.num_classes).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = data.images[: args.batch_size].to(device).float() / 127.5 - 1
    y = data.masks[: args.batch_size].to(device).long()
    steps = args.images // args.batch_size  # one of unet-opt's epochs (drop_last)
    bare_loop(model, optimizer, x, y, 0, device, cfg, warm_up=2)

    # (b) unet-opt's own epochs; the first warms up, each later one is followed by its bare twin
    ours: list[float] = []
    bare: list[float] = []

    def on_epoch(epoch: int, metrics: dict[str, float], best: float) -> bool:
        if epoch > 1:
            ours.append(metrics["images_per_second"])
            bare.append(bare_loop(model, optimizer, x, y, steps, device, cfg))
        return False

    config = Config(data=DataConfig(augment=args.augment), model=model_cfg, train=cfg)
    fit(config, data, split, on_epoch=on_epoch, group=Group(device))
    ratios = [b / a for a, b in zip(bare, ours)]

    flops = train_flops_per_image(build_model(model_cfg, data.num_classes), (2, 3, h, w), data.num_classes)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype)
    print(f"throughput: UNet base {args.base_channels} depth 3, {h}x{w}, batch {args.batch_size}, "
          f"{args.images} images/epoch, {device} ({torch.get_num_threads()} threads), "
          f"{'bf16 autocast, channels_last' if device.type == 'cuda' else 'float32'}")
    print("| measure | value |\n| --- | --- |")
    print(f"| (a) bare PyTorch loop, tensors in memory | {median(bare):.1f} images/s |")
    print(f"| (b) unet-opt training epoch (cache, batching, {args.augment} augmentation) | {median(ours):.1f} images/s |")
    print(f"| ratio b/a (target >= 0.90), median of {len(ratios)} pairs | {median(ratios):.2f} "
          f"(pairs: {min(ratios):.2f}-{max(ratios):.2f}) |")
    print(f"| training GFLOP per image (forward + backward) | {flops / 1e9:.2f} |")
    print(f"| achieved by (b) | {median(ours) * flops / 1e9:.1f} GFLOP/s |")
    print(f"| matmul peak ({str(dtype).removeprefix('torch.')}, 2048^2) | {peak:.1f} GFLOP/s "
          f"(b reaches {100 * median(ours) * flops / 1e9 / peak:.0f}%) |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
