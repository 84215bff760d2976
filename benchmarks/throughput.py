"""Training throughput: unet-opt's own epoch against a bare PyTorch loop with the same loss, in one run.

(a) the limit: forward, the recipe's loss (ce+dice with the training split's inverse class weights, as
    `fit` trains by default), backward and an Adam step, on one batch already in memory; nothing else;
(b) unet-opt: the training phase of `train.fit`'s epochs on the same images, size and batch: cached
    uint8 tensors, shuffling, batching, the augmentation, the per-step schedule, the loss accumulated on
    the device (the images/s that fit reports; validation is excluded from both).
The two alternate: after each of unet-opt's epochs the bare loop runs as many steps, so that the drifting
load of a shared machine weighs on both alike; the figures are medians over the pairs. Then the parts of a
step, each timed alone (medians of `--repeats`): forward and backward with plain cross-entropy, what the
recipe's loss adds to them (and what the former formulation of it, two softmaxes and boolean indexing,
added), the optimizer step, the schedule step, and the batch with its augmentation.

    python benchmarks/throughput.py [--device cpu|cuda] [--image-size 64] [--batch-size 8] [--images 96]
        [--augment crop|flip|none]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from statistics import median

import torch
import torch.nn.functional as F

from unet_opt.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.core.data import IGNORE, batches, load_data
from unet_opt.core.group import Group
from unet_opt.core.losses import class_weights, segmentation_loss
from unet_opt.core.model import build_model
from unet_opt.core.optim import make_optimizer, make_schedule
from unet_opt.core.scoring import autocast
from unet_opt.core.train import fit


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs, after one to warm up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return median(times)


def former_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ce+dice as `losses.segmentation_loss` computed it before one log-softmax served both terms: a
    cross-entropy and a separate softmax, ignored pixels taken out by boolean indexing."""
    keep = target != IGNORE
    truth = torch.where(keep, target, 0).long()
    per_pixel = F.cross_entropy(logits, truth, reduction="none")
    probabilities = logits.softmax(dim=1)
    pixel_weights = keep.float() * weights[truth]
    loss = (per_pixel * pixel_weights).sum() / pixel_weights.sum().clamp_min(1e-12)
    classes = probabilities.shape[1]
    p_true = probabilities.gather(1, truth.unsqueeze(1))[:, 0][keep]
    intersection = torch.zeros(classes, device=logits.device).index_add(0, truth[keep], p_true)
    predicted = (probabilities * keep.unsqueeze(1).float()).sum(dim=(0, 2, 3))
    true = torch.bincount(truth[keep], minlength=classes)[:classes].float()
    dice = (2 * intersection + 1) / (predicted + true + 1)
    present = true > 0
    return loss + 1 - dice[present].sum() / present.sum().clamp_min(1)


def bare_loop(model, optimizer, x, y, steps, device, cfg, weights, warm_up: int = 0) -> float:
    """images/s of forward + the recipe's loss + backward + step on one batch already on the device."""

    def step() -> None:
        with autocast(device, cfg):
            logits = model(x)
        loss = segmentation_loss(logits.float(), y, False, cfg.loss, weights)
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


def parts(model, x, y, weights, cfg, data, train, augment, device, repeats) -> dict[str, float]:
    """Seconds per step of each part, timed alone."""
    optimizer = make_optimizer(model.parameters(), cfg)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch=len(train) // cfg.batch_size)
    logits = model(x).detach().requires_grad_()

    def backward(loss_of) -> None:
        loss_of(logits).backward()
        logits.grad = None

    def forward_backward() -> None:
        with autocast(device, cfg):
            loss = segmentation_loss(model(x).float(), y, False, "ce")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    generator = torch.Generator().manual_seed(0)

    def one_batch() -> None:
        next(iter(batches(data, train, cfg.batch_size, shuffle=True, augment=augment, generator=generator)))

    plain = timed(lambda: backward(lambda z: segmentation_loss(z, y, False, "ce")), device, repeats)
    return {
        "forward + backward, plain cross-entropy": timed(forward_backward, device, repeats),
        f"the recipe's loss ({cfg.loss}, weighted), beyond plain cross-entropy":
            timed(lambda: backward(lambda z: segmentation_loss(z, y, False, cfg.loss, weights)), device,
                  repeats) - plain,
        "the same loss as formerly computed (two softmaxes, boolean indexing), beyond plain cross-entropy":
            timed(lambda: backward(lambda z: former_loss(z, y, weights)), device, repeats) - plain,
        "optimizer step (Adam)": timed(optimizer.step, device, repeats),
        "schedule step (poly, per optimizer step)": timed(schedule.step, device, repeats),
        f"batch assembly with {augment} augmentation": timed(one_batch, device, repeats),
    }


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
    parser.add_argument("--repeats", type=int, default=20, help="timings of each part")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first one only warms up")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model_cfg = ModelConfig(base_channels=args.base_channels, depth=3)
    cfg = TrainConfig(lr=1e-3, batch_size=args.batch_size, epochs=args.epochs, patience=99, device=args.device)

    # the data set: synthetic scenes, decoded once, kept as uint8 tensors (as in a search)
    n_total = round(args.images / 0.7) + 2
    data = load_data(DataConfig(image_size=args.image_size, synthetic_images=n_total), model_cfg.depth)
    train_idx = list(range(args.images))
    split = {"train": train_idx, "val": list(range(args.images, n_total))}
    h, w = data.images.shape[-2:]
    weights = class_weights(data.masks[train_idx], data.num_classes, cfg.class_weights)
    weights = weights.to(device) if weights is not None else None

    # (a) the bare loop on the same model, size, batch and loss, warmed up before the pairs start
    torch.manual_seed(0)
    model = build_model(model_cfg, data.num_classes).to(device)
    if cfg.channels_last:  # as fit trains (oneDNN's CPU convolutions prefer it too)
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = data.images[: args.batch_size].to(device).float() / 127.5 - 1
    y = data.masks[: args.batch_size].to(device).long()
    steps = args.images // args.batch_size  # one of unet-opt's epochs (drop_last)
    bare_loop(model, optimizer, x, y, 0, device, cfg, weights, warm_up=2)

    # (b) unet-opt's own epochs; the first warms up, each later one is followed by its bare twin
    ours: list[float] = []
    bare: list[float] = []

    def on_epoch(epoch: int, metrics: dict[str, float], best: float | None) -> bool:
        if epoch > 1:
            ours.append(metrics["images_per_second"])
            bare.append(bare_loop(model, optimizer, x, y, steps, device, cfg, weights))
        return False

    config = Config(data=DataConfig(augment=args.augment), model=model_cfg, train=cfg)
    fit(config, data.to(device), split, on_epoch=on_epoch, group=Group(device))
    ratios = [b / a for a, b in zip(bare, ours)]
    step_parts = parts(model, x, y, weights, cfg, data.to(device), train_idx, args.augment, device, args.repeats)

    print(f"throughput: UNet base {args.base_channels} depth 3, {h}x{w}, batch {args.batch_size}, "
          f"{args.images} images/epoch, {cfg.loss} loss with {cfg.class_weights} class weights, {device} "
          f"({torch.get_num_threads()} threads), {'bf16 autocast, channels_last' if device.type == 'cuda' else 'float32'}")
    print("| measure | value |\n| --- | --- |")
    print(f"| (a) bare PyTorch loop, the same loss, tensors in memory | {median(bare):.1f} images/s |")
    print(f"| (b) unet-opt training epoch (cache, batching, {args.augment} augmentation, schedule) | "
          f"{median(ours):.1f} images/s |")
    print(f"| ratio b/a (target >= 0.95), median of {len(ratios)} pairs | {median(ratios):.2f} "
          f"(pairs: {min(ratios):.2f}-{max(ratios):.2f}) |")
    step = args.batch_size / median(ours)
    print(f"\n| part of a step (batch {args.batch_size}) | ms | share of (b)'s step ({step * 1000:.0f} ms) |")
    print("| --- | --- | --- |")
    for label, seconds in step_parts.items():
        print(f"| {label} | {seconds * 1000:.2f} | {100 * seconds / step:.1f}% |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
