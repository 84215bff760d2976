"""Pruning benchmark: the same 30-trial search with the default pruner and with --pruner none.

Runs `unet-opt search` twice per sampler seed on the embedded data (same seed for both), each in an
empty folder, and prints the epochs trained, the wall time and the best val_dice of each, their ratios,
and with several seeds the totals over all of them.

    python benchmarks/pruning.py [--trials 30] [--seeds 0 [1 2 ...]] [--pruner contenders]
"""

from __future__ import annotations

import argparse
import statistics
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


def row(label: str, p: dict, n: dict) -> str:
    """One table row: the pruner's figures against the unpruned search's."""
    return (f"| {label} | {p['epochs']} / {n['epochs']} | {n['epochs'] / p['epochs']:.2f}x | "
            f"{p['wall']:.0f} s / {n['wall']:.0f} s | {p['best']:.4f} / {n['best']:.4f} | "
            f"{p['best'] - n['best']:+.4f} | {p['pruned']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampler seeds, one pair of searches each")
    parser.add_argument("--pruner", default="contenders")
    args = parser.parse_args()
    print(f"pruning: {args.trials} trials on the embedded data, {args.pruner} against none "
          f"(targets, issue 26: >= 4x fewer epochs, best within 0.01)")
    print(f"| seed | epochs: {args.pruner} / none | ratio | wall time | best val_dice | difference | pruned |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    pairs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            pair = []
            for pruner in (args.pruner, "none"):
                folder = Path(tmp) / pruner
                folder.mkdir()
                pair.append(search(folder, pruner, args.trials, seed))
        pairs.append(pair)
        print(row(str(seed), *pair), flush=True)
    if len(pairs) > 1:  # epochs and walls summed, best values averaged over the seeds
        total = [{"epochs": sum(pair[i]["epochs"] for pair in pairs), "wall": sum(pair[i]["wall"] for pair in pairs),
                  "best": statistics.mean(pair[i]["best"] for pair in pairs),
                  "pruned": sum(pair[i]["pruned"] for pair in pairs)} for i in (0, 1)]
        print(row(f"all {len(pairs)} (best: mean)", *total))
        met = sum(n["epochs"] >= 4 * p["epochs"] and p["best"] >= n["best"] - 0.01 for p, n in pairs)
        print(f"both targets met on {met} of {len(pairs)} seeds")


if __name__ == "__main__":
    main()
