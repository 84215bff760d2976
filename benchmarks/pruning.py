"""Pruning benchmark: the same 30-trial search with the default pruner and with --pruner none.

Runs `unet-opt search` twice per sampler seed on the embedded data (same seed for both), each in an
empty folder, and prints the epochs trained, the wall time and the best val_dice of each, their ratios,
and with several seeds the totals over all of them. A last column reads the unpruned search as if it
had stopped once it had trained as many epochs as the pruned one: its best among the trials it had
finished by then, in trial order (the best for the same epochs of training, which is what pruning is
for; nan when no trial had finished by then).

    python benchmarks/pruning.py [--trials 30] [--seeds 0 [1 2 ...]] [--pruner contenders] [--keep FOLDER]
"""

from __future__ import annotations

import argparse
import contextlib
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
    trials = sorted(study.trials, key=lambda t: t.number)
    return {"wall": wall, "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
            "best": study.best_value, "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "trials": [(t.user_attrs.get("epochs_run", 0), t.value if t.state.name == "COMPLETE" else None)
                       for t in trials]}


def best_within(trials: list[tuple[int, float | None]], epochs: int) -> float:
    """The best value among the trials finished by the time `epochs` epochs were trained, in trial order
    (one process runs them in that order); nan when none had finished."""
    values, spent = [], 0
    for run, value in trials:
        spent += run
        if spent > epochs:
            break
        if value is not None:
            values.append(value)
    return max(values, default=float("nan"))


def row(label: str, p: dict, n: dict) -> str:
    """One table row: the pruner's figures against the unpruned search's."""
    return (f"| {label} | {p['epochs']} / {n['epochs']} | {n['epochs'] / p['epochs']:.2f}x | "
            f"{p['wall']:.0f} s / {n['wall']:.0f} s | {p['best']:.4f} / {n['best']:.4f} | "
            f"{p['best'] - n['best']:+.4f} | {p['pruned']} | {n.get('best_at_same', float('nan')):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampler seeds, one pair of searches each")
    parser.add_argument("--pruner", default="contenders")
    parser.add_argument("--keep", type=Path, help="keep each search's folder under this folder (seed-N/PRUNER)")
    args = parser.parse_args()
    if args.pruner == "none":
        parser.error("--pruner none is the reference every search is compared with; pick a pruner to measure")
    if args.keep and any((args.keep / f"seed-{seed}").exists() for seed in args.seeds):
        parser.error(f"{args.keep} already holds a seed-N folder of these seeds; pick an empty --keep folder")
    print(f"pruning: {args.trials} trials on the embedded data, {args.pruner} against none "
          f"(targets, issue 26: >= 4x fewer epochs, best within 0.01)")
    print(f"| seed | epochs: {args.pruner} / none | ratio | wall time | best val_dice | difference | pruned "
          f"| unpruned best at the pruned search's epochs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    pairs = []
    for seed in args.seeds:
        # with --keep the folders stay there; else in a temporary folder removed after the pair
        with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory() as root:
            pair = []
            for pruner in (args.pruner, "none"):
                folder = Path(root) / f"seed-{seed}" / pruner
                folder.mkdir(parents=True)
                pair.append(search(folder, pruner, args.trials, seed))
        pair[1]["best_at_same"] = best_within(pair[1]["trials"], pair[0]["epochs"])
        pairs.append(pair)
        print(row(str(seed), *pair), flush=True)
    if len(pairs) > 1:  # epochs and walls summed, best values averaged over the seeds
        total = [{"epochs": sum(pair[i]["epochs"] for pair in pairs), "wall": sum(pair[i]["wall"] for pair in pairs),
                  "best": statistics.mean(pair[i]["best"] for pair in pairs),
                  "pruned": sum(pair[i]["pruned"] for pair in pairs)} for i in (0, 1)]
        total[1]["best_at_same"] = statistics.mean(pair[1]["best_at_same"] for pair in pairs)
        print(row(f"all {len(pairs)} (best: mean)", *total))
        met = sum(n["epochs"] >= 4 * p["epochs"] and p["best"] >= n["best"] - 0.01 for p, n in pairs)
        print(f"both targets met on {met} of {len(pairs)} seeds")


if __name__ == "__main__":
    main()
