"""Is SQLite safe for `--workers K`? K processes drive one study as hard as a worker loop can.

Each process runs trials that write what a unet-opt trial writes (ask, two user attributes, one
report and one prune check per epoch, a heartbeat, tell), with no training in between, so the storage
is the only thing they wait on. Compared on: unet-opt's SQLite storage (RDB with heartbeats and a 60 s
busy timeout) and Optuna's journal file storage. Prints trials/s, storage errors and whether every
trial number is distinct.

    python benchmarks/storage.py [--workers 4] [--trials 25] [--epochs 10]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import optuna

from unet_opt.study.storage import open_storage


def make_storage(kind: str, folder: Path):
    if kind == "sqlite":
        return open_storage(f"sqlite:///{folder}/study.db")
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "journal.log")))


def drive(kind: str, folder: Path, trials: int, epochs: int, errors, spans, go) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(kind, folder)
    study = optuna.load_study(study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=optuna.pruners.NopPruner())
    go.wait()  # every process has started and connected: time the storage, not the imports
    start = time.time()
    for _ in range(trials):
        try:
            trial = study.ask()
            trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            trial.set_user_attr("worker", "bench")
            trial.set_user_attr("mlflow_run_id", "x" * 32)
            if kind == "sqlite":
                storage.record_heartbeat(trial._trial_id)
            for epoch in range(1, epochs + 1):
                trial.report(epoch / epochs, epoch)
                trial.should_prune()
            study.tell(trial, 1.0)
        except Exception as e:  # what we are counting
            errors.put(f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    spans.put((start, time.time()))


def measure(kind: str, workers: int, trials: int, epochs: int) -> tuple[float, list[str], bool, int]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        optuna.create_study(study_name="bench", storage=make_storage(kind, folder))
        context = multiprocessing.get_context("spawn")
        errors, spans, go = context.Queue(), context.Queue(), context.Barrier(workers)
        processes = [context.Process(target=drive, args=(kind, folder, trials, epochs, errors, spans, go))
                     for _ in range(workers)]
        for p in processes:
            p.start()
        times = [spans.get() for _ in processes]
        for p in processes:
            p.join()
        seconds = max(end for _, end in times) - min(start for start, _ in times)
        found = []
        while not errors.empty():
            found.append(errors.get())
        done = optuna.load_study(study_name="bench", storage=make_storage(kind, folder)).trials
        numbers = [t.number for t in done]
        complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in done)
        return seconds, found, len(set(numbers)) == len(numbers), complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=25, help="trials per worker")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"{args.workers} processes x {args.trials} trials x {args.epochs} epochs, no training in between")
    print(f"{'storage':<8} {'seconds':>8} {'trials/s':>9} {'complete':>9} {'errors':>7}  distinct numbers")
    for kind in ("sqlite", "journal"):
        seconds, errors, distinct, complete = measure(kind, args.workers, args.trials, args.epochs)
        print(f"{kind:<8} {seconds:8.1f} {complete / seconds:9.1f} {complete:9d} {len(errors):7d}  {distinct}")
        for e in sorted(set(errors))[:3]:
            print(f"    {e}")


if __name__ == "__main__":
    main()
