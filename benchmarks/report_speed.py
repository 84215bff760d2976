"""`unet-opt report` and `studies` against Optuna's own CLI on the same storage (target: at most 2x).

Both only read the study storage, so what differs is start-up: imports. Each command runs `--repeat`
times as a fresh process; the median wall time is compared. Without --home, a folder is searched first
with tiny settings (3 trials).

    python benchmarks/report_speed.py [--home FOLDER] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TINY = ["--set", "space.image_size.choices=[32]", "--set", "space.epochs.low=2", "--set", "space.epochs.high=2",
        "--set", "data.synthetic_images=24", "--set", "model.base_channels=8"]


def seconds(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="a searched project folder (default: search a new one)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp)
        if args.home is None:
            subprocess.run([BIN / "unet-opt", "--home", home, "search", "--trials", "3", *TINY], check=True,
                           capture_output=True)
        storage = f"sqlite:///{home.resolve()}/studies/unet-opt.db"
        study = subprocess.run([BIN / "unet-opt", "--home", home, "report", "--json"], check=True,
                               capture_output=True, text=True).stdout.split('"study": "')[1].split('"')[0]
        optuna_best = seconds([BIN / "optuna", "best-trial", "--study-name", study, "--storage", storage], args.repeat)
        rows = [("optuna best-trial", optuna_best),
                ("optuna studies", seconds([BIN / "optuna", "studies", "--storage", storage], args.repeat)),
                ("unet-opt report", seconds([BIN / "unet-opt", "--home", home, "report"], args.repeat)),
                ("unet-opt studies", seconds([BIN / "unet-opt", "--home", home, "studies"], args.repeat))]
    print(f"{'command':<20} {'median s':>9} {'/ optuna best-trial':>20}")
    for name, wall in rows:
        print(f"{name:<20} {wall:>9.2f} {wall / optuna_best:>20.2f}")


if __name__ == "__main__":
    main()
