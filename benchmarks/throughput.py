"""Training throughput: unet-opt's own epoch against a bare PyTorch loop, measured in one run.

(a) the limit: forward/backward/step of the same UNet over batches already in memory, nothing else;
(b) unet-opt: the training phase of `train.fit`'s epochs on the same images, size and batch: cached
    uint8 tensors, shuffling, batching, flip augmentation, the loss accumulated on the device (the
    images/s that fit reports; validation, with its confusion matrix, is excluded from both).
Prints images/s for both, the ratio b/a, and the achieved GFLOP/s against a measured matmul peak.

    python benchmarks/throughput.py [--device cpu|cuda] [--image-size 64] [--batch-size 8] [--images 96]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from unet_opt.config import DataConfig, ModelConfig, TrainConfig
from unet_opt.data import load_data
from unet_opt.model import build_model
from unet_opt.train import autocast, fit, segmentation_loss


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


def bare_loop(model, optimizer, x, y, steps, device, cfg) -> float:
    """images/s of forward + backward + step on one batch already on the device."""

    def step() -> None:
        with autocast(device, cfg):
            loss = segmentation_loss(model(x).float(), y, False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: allocator, cuDNN autotuning
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
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="unet-opt epochs to time (the first warms up)")
    args = parser.parse_args()
    device = torch.device(args.device)
    model_cfg = ModelConfig(base_channels=args.base_channels, depth=3)
    cfg = TrainConfig(lr=1e-3, batch_size=args.batch_size, epochs=args.epochs, patience=99, device=args.device)

    # the data set: synthetic scenes, decoded once, kept as uint8 tensors (as in a search)
    n_total = round(args.images / 0.7) + 2
    data = load_data(DataConfig(image_size=args.image_size, synthetic_images=n_total), model_cfg.depth)
    train_idx = list(range(args.images))
    split = {"train": train_idx, "val": list(range(args.images, n_total))}
    h, w = data.images.shape[-2:]

    # (b) unet-opt's own epochs; the first one warms up, the rest are timed via the callback
    rates: list[float] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        if epoch > 1:
            rates.append(metrics["images_per_second"])
        return False

    fit(model_cfg, cfg, data, split, augment="flip", on_epoch=on_epoch)
    ours = sum(rates) / len(rates)

    # (a) the bare loop on the same model, size and batch
    torch.manual_seed(0)
    model = build_model(model_cfg, data.num_classes).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = data.images[: args.batch_size].to(device).float() / 127.5 - 1
    y = data.masks[: args.batch_size].to(device).long()
    bare = bare_loop(model, optimizer, x, y, args.images // args.batch_size * (args.epochs - 1), device, cfg)

    flops = train_flops_per_image(build_model(model_cfg, data.num_classes), (2, 3, h, w), data.num_classes)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype)
    print(f"throughput: UNet base {args.base_channels} depth 3, {h}x{w}, batch {args.batch_size}, "
          f"{args.images} images/epoch, {device} ({torch.get_num_threads()} threads), "
          f"{'bf16 autocast, channels_last' if device.type == 'cuda' else 'float32'}")
    print("| measure | value |\n| --- | --- |")
    print(f"| (a) bare PyTorch loop, tensors in memory | {bare:.1f} images/s |")
    print(f"| (b) unet-opt training epoch (cache, batching, augmentation) | {ours:.1f} images/s |")
    print(f"| ratio b/a (target >= 0.90) | {ours / bare:.2f} |")
    print(f"| training GFLOP per image (forward + backward) | {flops / 1e9:.2f} |")
    print(f"| achieved by (b) | {ours * flops / 1e9:.1f} GFLOP/s |")
    print(f"| matmul peak ({str(dtype).removeprefix('torch.')}, 2048^2) | {peak:.1f} GFLOP/s "
          f"(b reaches {100 * ours * flops / 1e9 / peak:.0f}%) |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
