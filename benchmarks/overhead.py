"""What a search spends outside training: start-up, per-trial overhead, and the epoch itself.

Runs `unet-opt search` on tiny trials (2 epochs at 32x48, 24 images, batch 4, no pruning) in a new folder,
as a user would, and reads back from both stores when the first trial started and how long every epoch
took (MLflow's `epoch_seconds`). Then:
- before the first trial: from the command's start (imports, store creation, data) to the first trial;
- per-trial overhead: (command wall time - time before the first trial - epoch time) / trials, for one
  process and for `--procs 2` (rank processes, their start and their data included);
- of which, PyTorch's: its first optimizer imports `torch._dynamo` (seconds, once per search; timed alone);
- of which, the search's own for each trial after the first: from the previous trial's end to its own,
  less its epochs (Optuna, MLflow, the report handed over), without the first trial's import above and
  without the drawing, which the writer process does;
- drawing: one complete trial's figures and files, timed alone (done by the search's writer process, at
  the lowest priority on a CPU; pruned trials draw none);
- epoch: the bare PyTorch loop against unet-opt's `fit` at the same settings, in pairs (one of each,
  alternating, so the drifting load of a shared machine weighs on both), medians of the pairs.
Targets on the 2-core reference machine (issue 26): <= 4 s before the first trial, <= 0.2 s per trial in
one process, <= 1.5 s per trial with 2 ranks. Each figure is printed with its ratio to the target.
Every trial here completes (no pruning), so every trial's figures are drawn: the worst case for them.

    python benchmarks/overhead.py [--trials 8] [--trials-2 6]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

BIN = Path(sys.executable).parent
SPACE = """
[data]
dataset = "synthetic"
synthetic_images = 24
image_size = 32
augment = "flip"
[model]
base_channels = 16
depth = 3
[train]
epochs = 2
batch_size = 4
[search]
pruner = "none"
[space.lr]
type = "float"
low = 1e-4
high = 1e-2
log = true
"""


def search(folder: Path, trials: int, *extra: str) -> dict[str, float]:
    """Run one search in `folder` (new) and measure it from outside, then from its stores."""
    folder.mkdir()
    (folder / "tiny.toml").write_text(SPACE)
    started_at, started = datetime.datetime.now(), time.perf_counter()
    subprocess.run([str(BIN / "unet-opt"), "search", "--space", "tiny.toml", "--trials", str(trials), *extra],
                   cwd=folder, check=True, capture_output=True)
    wall = time.perf_counter() - started
    with contextlib.closing(sqlite3.connect(folder / "studies" / "unet-opt.db")) as db:
        first, last = db.execute("SELECT min(datetime_start), max(datetime_complete) FROM trials").fetchone()
        first_end = db.execute("SELECT datetime_complete FROM trials WHERE number = 0").fetchone()[0]
        done = db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    with contextlib.closing(sqlite3.connect(folder / "mlruns" / "mlflow.db")) as db:
        epochs, count = db.execute("SELECT sum(value), count(*) FROM metrics WHERE key = 'epoch_seconds'").fetchone()
        first_epochs = db.execute("SELECT sum(m.value) FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
                                  "WHERE m.key = 'epoch_seconds' AND t.key = 'optuna.trial' AND t.value = '0'"
                                  ).fetchone()[0]
    if done != trials:
        raise SystemExit(f"expected {trials} complete trials, the study has {done}")
    before = (datetime.datetime.fromisoformat(first) - started_at).total_seconds()
    loop = (datetime.datetime.fromisoformat(last) - datetime.datetime.fromisoformat(first)).total_seconds()
    later = (datetime.datetime.fromisoformat(last) - datetime.datetime.fromisoformat(first_end)).total_seconds()
    return {"wall": wall, "before": before, "epochs": epochs, "epoch_count": count,
            "per_trial": (wall - before - epochs) / trials, "in_loop": (loop - epochs) / trials,
            "after": wall - before - loop,
            # the search's own work for each trial after the first (trials run one after another here):
            # without the first trial's PyTorch import, and without the drawing, which the writer does
            "later": (later - (epochs - first_epochs)) / (trials - 1) if trials > 1 else float("nan")}


def epoch_pairs(pairs: int) -> tuple[float, float]:
    """(median seconds of unet-opt's epoch, of the bare loop's) at the tiny search's settings, one process."""
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from throughput import bare_loop

    from unet_opt.config.schema import Config, DataConfig, ModelConfig, TrainConfig
    from unet_opt.core.data import load_data, make_split, split_indices
    from unet_opt.core.group import Group
    from unet_opt.core.losses import class_weights
    from unet_opt.core.model import build_model
    from unet_opt.core.train import fit

    data_cfg, model_cfg = DataConfig(synthetic_images=24, image_size=32, augment="flip"), ModelConfig(16, 3)
    cfg = TrainConfig(lr=1e-3, batch_size=4, epochs=pairs + 1, patience=99)
    data = load_data(data_cfg, model_cfg.depth)
    split = split_indices(make_split(data.names, 0.15, 0.15, 0), data.names)
    device = torch.device("cpu")
    model = build_model(model_cfg, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data.images[:4].float() / 127.5 - 1, data.masks[:4].long()
    weights = class_weights(data.masks[split["train"]], data.num_classes, cfg.class_weights)
    steps = len(split["train"]) // 4
    ours, bare = [], []

    def on_epoch(epoch: int, metrics: dict[str, float], best: float) -> bool:
        if epoch > 1:  # the first warms up
            ours.append(metrics["epoch_seconds"])
            started = time.perf_counter()
            bare_loop(model, optimizer, x, y, steps, device, cfg, weights)
            with torch.inference_mode():  # the bare twin of validation: forward passes over as many images
                for _ in range(0, len(split["val"]), 4):
                    model(x)
            bare.append(time.perf_counter() - started)
        return False

    fit(Config(data=data_cfg, model=model_cfg, train=cfg), data, split, on_epoch=on_epoch, group=Group(device))
    return median(ours), median(bare)


def drawing_seconds(repeat: int = 5) -> float:
    """Median seconds to draw and write one tiny complete trial's files (what the writer process does for
    each), the drawing libraries already imported."""
    import numpy as np

    from unet_opt.core.data import ClassTable
    from unet_opt.tracking.report_files import RunReport, SplitReport, write_report

    classes, rng = ClassTable.drone(), np.random.default_rng(0)
    masks = rng.integers(0, len(classes), (4, 32, 48), dtype=np.uint8)
    split = SplitReport(rng.integers(0, 500, (len(classes),) * 2), list(classes.names), list(classes.colors),
                        rng.integers(0, 255, (4, 32, 48, 3), dtype=np.uint8), masks, masks[::-1].copy(), epoch=2)
    history = [{"train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_dice": 0.2 * e, "lr": 1e-3} for e in (1, 2)]
    report = RunReport("[train]\n", "val_dice", history, 2, [split])
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat + 1):
            started = time.perf_counter()
            write_report(Path(tmp), report)
            times.append(time.perf_counter() - started)
    return median(times[1:])  # the first pays for the imports


def optimizer_import_seconds(repeat: int = 3) -> float:
    """Median seconds that PyTorch's first optimizer takes to import `torch._dynamo` (its `__init__` is wrapped
    by `torch._disable_dynamo`), in a fresh interpreter with torch imported: paid once by every search, in
    its first trial, whatever unet-opt does."""
    code = ("import time, torch; started = time.perf_counter(); torch.optim.Adam([torch.zeros(1)]); "
            "print(time.perf_counter() - started)")
    return median(float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="trials of the one-process search")
    parser.add_argument("--trials-2", type=int, default=6, help="trials of the --procs 2 search")
    parser.add_argument("--pairs", type=int, default=10, help="epoch pairs, unet-opt and bare")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="unet-opt-overhead-") as tmp:
        one = search(Path(tmp) / "one", args.trials)
        two = search(Path(tmp) / "two", args.trials_2, "--device", "cpu", "--procs", "2")
    ours, bare = epoch_pairs(args.pairs)
    drawing = drawing_seconds()
    optimizer = optimizer_import_seconds()
    print("overhead: tiny trials (2 epochs at 32x48, 24 images, batch 4, no pruning), a new folder each\n")
    print("| measure | value | target | ratio to target |\n| --- | --- | --- | --- |")
    for label, value, target in (
            ("before the first trial (imports, stores, data)", one["before"], 4.0),
            (f"per-trial overhead, 1 process ({args.trials} trials)", one["per_trial"], 0.2),
            (f"of which: PyTorch's first optimizer importing torch._dynamo, {optimizer:.2f} s once",
             optimizer / args.trials, None),
            ("of which: the search's own, each trial after the first (from the previous trial's end to its own, "
             "less its epochs)", one["later"], None),
            (f"per-trial overhead, --procs 2 ({args.trials_2} trials)", two["per_trial"], 1.5)):
        print(f"| {label} | {value:.2f} s | " + (f"<= {target:g} s | {value / target:.2f} |" if target else "| |"))
    print(f"| drawing one complete trial's files, timed alone (the writer process does it) | "
          f"{drawing:.2f} s | | |")
    print(f"| epoch, unet-opt `fit` / bare loop (median of {args.pairs} pairs) | {ours * 1000:.0f} / "
          f"{bare * 1000:.0f} ms | | {ours / bare:.2f} |")
    for name, r in (("1 process", one), ("--procs 2", two)):
        print(f"\n{name}: wall {r['wall']:.1f} s = {r['before']:.1f} s before the first trial + "
              f"{r['epochs']:.1f} s in {r['epoch_count']} epochs + {r['wall'] - r['before'] - r['epochs']:.1f} s else "
              f"({r['in_loop']:.2f} s a trial between the first trial's start and the last one's end, "
              f"{r['after']:.1f} s after it: the study's files, the writer's last figures, the exit)")


if __name__ == "__main__":
    main()
