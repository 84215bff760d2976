"""Pruning benchmark: the same 30-trial search with the default pruner and with --pruner none.

Runs `unet-opt search` twice on the embedded data, same sampler seed, each in an empty folder, and
prints the epochs trained, the wall time and the best val_dice of each, and their ratios.

    python benchmarks/pruning.py [--trials 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna


def search(folder: Path, pruner: str, trials: int, seed: int) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "unet_opt", "search", "--trials", str(trials), "--seed", str(seed),
                    "--pruner", pruner], cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{folder}/studies/unet-opt.db")
    return {"wall": wall, "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in study.trials),
            "best": study.best_value, "pruned": sum(t.state.name == "PRUNED" for t in study.trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pruner", default="hyperband")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pruner in (args.pruner, "none"):
            folder = Path(tmp) / pruner
            folder.mkdir()
            results[pruner] = search(folder, pruner, args.trials, args.seed)
    p, n = results[args.pruner], results["none"]
    print(f"pruning: {args.trials} trials on the embedded data, sampler seed {args.seed}")
    print("| pruner | epochs trained | wall time | best val_dice | pruned trials |\n| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['epochs']} | {r['wall']:.0f} s | {r['best']:.4f} | {r['pruned']} |")
    print(f"| ratio none/{args.pruner} | {n['epochs'] / p['epochs']:.2f}x fewer epochs (target >= 3x) | "
          f"{n['wall'] / p['wall']:.2f}x faster | best differs by {p['best'] - n['best']:+.4f} (target within 0.02) | |")


if __name__ == "__main__":
    main()
