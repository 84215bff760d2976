"""Training-recipe benchmark on the embedded data set.

`fits` (the default): one training run per recipe at a fixed budget (the default space's data, 64x96,
a fixed number of epochs, no early stopping), each at the best of a small learning-rate grid, since
every optimizer and loss has its own best rate. Prints per recipe: val macro Dice, the Dice of the small
classes (person, car, pool, tree) and seconds per epoch, and each against today's recipe (Adam, constant
rate, unweighted cross-entropy) measured in the same run.

`searches`: the default 30-trial search with today's recipe and with the new defaults, per sampler seed,
each in an empty folder: the best val_dice and the epochs trained.

    python benchmarks/recipe.py fits [--epochs 15] [--only today defaults ...]
    python benchmarks/recipe.py searches [--trials 30] [--seeds 0 1 2] [--space binary]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TODAY = {"train.loss": "ce", "train.class_weights": "none", "train.optimizer": "adam", "train.schedule": "constant",
         "train.warmup_epochs": 0, "train.grad_clip": 0.0}
ADAM_RATES, SGD_RATES = (1e-3, 3e-3, 1e-2), (1e-2, 3e-2, 1e-1)
RECIPES = {
    "today": {},
    "loss=dice": {"train.loss": "dice"},
    "loss=ce+dice": {"train.loss": "ce+dice"},
    "loss=focal": {"train.loss": "focal"},
    "class_weights=sqrt_inverse": {"train.class_weights": "sqrt_inverse"},
    "class_weights=inverse": {"train.class_weights": "inverse"},
    "optimizer=adamw (wd 1e-4)": {"train.optimizer": "adamw", "train.weight_decay": 1e-4},
    "optimizer=sgd (nesterov 0.9)": {"train.optimizer": "sgd"},
    "schedule=cosine": {"train.schedule": "cosine"},
    "schedule=poly": {"train.schedule": "poly"},
    "schedule=onecycle": {"train.schedule": "onecycle"},
    "warmup 1 + cosine": {"train.schedule": "cosine", "train.warmup_epochs": 1},
    "grad_clip=1": {"train.grad_clip": 1.0},
    "encoder=resnet18": {"model.encoder": "resnet18"},
    "encoder=mobilenet_v3_large": {"model.encoder": "mobilenet_v3_large"},
    "encoder=efficientnet_b0": {"model.encoder": "efficientnet_b0"},
    "inverse + poly": {"train.class_weights": "inverse", "train.schedule": "poly"},
    "inverse + ce+dice": {"train.class_weights": "inverse", "train.loss": "ce+dice"},
    "inverse + ce+dice + poly": {"train.class_weights": "inverse", "train.loss": "ce+dice", "train.schedule": "poly"},
    "sqrt_inverse + ce+dice + poly": {"train.class_weights": "sqrt_inverse", "train.loss": "ce+dice",
                                      "train.schedule": "poly"},
}
SMALL = ("person", "car", "pool", "tree")


def new_defaults() -> dict:
    """The recipe fields of the defaults that a space file without them gets."""
    from unet_opt.config.schema import ModelConfig, TrainConfig

    train, model = TrainConfig(), ModelConfig()
    return {f"train.{k}": getattr(train, k) for k in ("loss", "class_weights", "optimizer", "schedule",
                                                      "warmup_epochs", "grad_clip")} | {"model.encoder": model.encoder}


def fit_once(recipe: dict, lr: float, epochs: int, data, split) -> dict:
    from unet_opt.config.space_file import load_config
    from unet_opt.core.metrics import per_class
    from unet_opt.core.train import fit

    values = {**TODAY, **recipe, "train.lr": lr, "train.epochs": epochs, "train.patience": epochs,
              "data.image_size": 64, "train.batch_size": 8}
    cfg = load_config("default", values, [])
    start = time.perf_counter()
    result = fit(cfg, data, split)
    seconds = (time.perf_counter() - start) / max(1, result.epochs_run)
    dice = per_class(result.confusion)["dice"]
    names = data.classes.names
    return {"dice": result.best_metrics["val_dice"], "seconds": seconds, "lr": lr,
            "small": {n: float(dice[names.index(n)]) for n in SMALL}}


def fits(args) -> None:
    from unet_opt.config.space_file import load_config
    from unet_opt.core.data import load_data
    from unet_opt.core.data.splits import make_split, split_indices

    cfg = load_config("default", {"data.image_size": 64}, [])
    data = load_data(cfg.data, cfg.model.depth)
    d = cfg.data
    split = split_indices(make_split(data.names, d.val_fraction, d.test_fraction, d.split_seed), data.names)
    recipes = {**RECIPES, "new defaults": new_defaults()}
    chosen = {k: v for k, v in recipes.items() if not args.only or k in args.only or k == "today"}
    print(f"{len(split['train'])} train / {len(split['val'])} val images at 64x96, {args.epochs} epochs, "
          f"best of the lr grid; val macro Dice and the small classes' Dice", flush=True)
    print(f"| recipe | lr | val Dice | vs today | {' | '.join(SMALL)} | s/epoch |")
    print(f"|---|---|---|---|{'---|' * len(SMALL)}---|")
    today = None
    for label, recipe in chosen.items():
        rates = SGD_RATES if recipe.get("train.optimizer") == "sgd" else ADAM_RATES
        runs = [fit_once(recipe, lr, args.epochs, data, split) for lr in rates]
        best = max(runs, key=lambda r: r["dice"])
        today = best["dice"] if label == "today" else today
        delta = f"{best['dice'] - today:+.4f}" if today is not None else ""
        small = " | ".join(f"{best['small'][n]:.3f}" for n in SMALL)
        print(f"| {label} | {best['lr']:g} | {best['dice']:.4f} | {delta} | {small} | "
              f"{statistics.median(r['seconds'] for r in runs):.2f} |", flush=True)


def search(folder: Path, trials: int, seed: int, sets: dict, space: str = "default") -> dict:
    import optuna

    start = time.perf_counter()
    flags = [arg for k, v in sets.items() for arg in ("--set", f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}")]
    subprocess.run([sys.executable, "-m", "unet_opt", "search", "--space", space, "--trials", str(trials), "--seed",
                    str(seed), *flags],
                   cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=space, storage=f"sqlite:///{folder}/studies/unet-opt.db")
    trained, progress = 0, []  # (epochs trained so far, best complete value so far), trial after trial
    for t in sorted(study.trials, key=lambda t: t.number):
        trained += t.user_attrs.get("epochs_run", 0)
        done = [p[1] for p in progress]
        value = t.value if t.state.name == "COMPLETE" else None
        progress.append((trained, max([v for v in [*done, value] if v is not None], default=0.0)))
    return {"best": study.best_value, "wall": time.perf_counter() - start, "epochs": trained, "progress": progress}


def best_within(progress: list[tuple[int, float]], epochs: int) -> float:
    """The best value a search had once it had trained at most `epochs` epochs."""
    return max([best for trained, best in progress if trained <= epochs], default=0.0)


def searches(args) -> None:
    print("| seed | today: best val_dice | epochs | new defaults: best val_dice | epochs | gain | "
          "new defaults within today's epochs | gain |")
    print("|---|---|---|---|---|---|---|---|")
    gains = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            old = search(Path(a), args.trials, seed, TODAY, args.space)
            new = search(Path(b), args.trials, seed, {}, args.space)
        within = best_within(new["progress"], old["epochs"])
        gains.append((new["best"] - old["best"], within - old["best"]))
        print(f"| {seed} | {old['best']:.4f} | {old['epochs']} | {new['best']:.4f} | {new['epochs']} | "
              f"{gains[-1][0]:+.4f} | {within:.4f} | {gains[-1][1]:+.4f} |", flush=True)
    whole, same_epochs = np.mean(gains, axis=0)
    print(f"mean gain {whole:+.4f}, and {same_epochs:+.4f} at no more epochs, over {len(gains)} seed(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["fits", "searches"], nargs="?", default="fits")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--space", default="default", help="searches: the space file (default, binary)")
    args = parser.parse_args()
    fits(args) if args.mode == "fits" else searches(args)


if __name__ == "__main__":
    main()
