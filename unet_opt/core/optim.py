"""The optimizer (`train.optimizer`) and its learning-rate schedule (`train.schedule`), stepped once per
optimizer step, so that a trial's `lr` curve is the same whatever its batch size and image count."""

from __future__ import annotations

import math

import torch

from unet_opt.config.schema import TrainConfig

POLY_POWER = 0.9  # nnU-Net's polynomial decay
ONECYCLE_WARMUP = 0.3  # onecycle's share of rising steps when train.warmup_epochs is 0 (torch's default)
ONECYCLE_START, ONECYCLE_END = 1 / 25, 1 / 25 / 1e4  # of lr, as torch's div_factor and final_div_factor


def make_optimizer(parameters, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":  # Nesterov momentum, as nnU-Net trains
        return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """`cfg.schedule` over `cfg.epochs` epochs, after `cfg.warmup_epochs` of linear warm-up."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg.schedule, step, warmup, total))


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The share of the base learning rate at optimizer step `step` (0-based) of `total`."""
    if schedule == "onecycle":  # torch's OneCycleLR shape (without its momentum cycling, which would
        rising = warmup or round(ONECYCLE_WARMUP * total)  # override train.momentum), safe on short runs
        if step < rising:
            return ONECYCLE_START + (1 - ONECYCLE_START) * (1 - math.cos(math.pi * step / rising)) / 2
        done = min(1.0, (step - rising) / max(1, total - rising))
        return ONECYCLE_END + (1 - ONECYCLE_END) * (1 + math.cos(math.pi * done)) / 2
    if step < warmup:
        return (step + 1) / (warmup + 1)
    done = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * done))
    if schedule == "poly":
        return (1 - done) ** POLY_POWER
    return 1.0
