"""Pruning rules replayed over kept unpruned searches: a screen in seconds before a rule is run live.

Each folder holds an unpruned search of the embedded default (`python benchmarks/pruning.py --keep FOLDER`
keeps them as FOLDER/seed-N/none). Its trials are fed, in their order, to the product's contenders pruner
(`ContenderHalving`) with the rungs, shares and minimum of contenders given: each trial reports its
best-so-far values epoch by epoch, as it did in the search, until the pruner stops it or its run ends (a
stop after a trial's last scheduled epoch is ignored, as `fit` ignores it). The trials are the unpruned
search's: the sampler does not react to what the pruner stops, as it does live. So a replay tells roughly
how many epochs a rule trains, and whether the unpruned search's own best trial would have survived it;
whether the live search, drawing other trials after the first prune, finds as good a best is what
`pruning.py` measures.

A rule is written "RUNGS SHARES MIN", e.g. "1,3,6,12 1:2/3 3" (the default): judged after epochs 1, 3, 6
and 12; the top two thirds go on after epoch 1, a third after the rungs not named ("-": a third at every
rung); a trial with fewer than 3 contenders goes on. `--grid` replays a grid of such rules and prints the
ones that keep the unpruned best (within 0.01) on the most seeds, most epochs saved first.

    python benchmarks/pruning_replay.py FOLDER/seed-*/none [--rule "2,4,8,16 - 3" ...] [--grid]
"""

from __future__ import annotations

import argparse
import itertools
from fractions import Fraction
from pathlib import Path

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import FrozenTrial, TrialState

from unet_opt.study.pruning import ContenderHalving

DEFAULT_RULE = "1,3,6,12 1:2/3 3"
WITHIN = 0.01  # issue 26: the pruned search's best within this of the unpruned one's


def parse_rule(text: str) -> tuple[tuple[int, ...], dict[int, Fraction], int]:
    """"1,3,6,12 1:2/3 3" -> ((1, 3, 6, 12), {1: 2/3}, 3); ValueError saying what is wrong with `text`."""
    fields = text.split()
    if len(fields) != 3:
        raise ValueError(f'rule "{text}": write RUNGS SHARES MIN, e.g. "{DEFAULT_RULE}"')
    try:
        rungs = tuple(int(r) for r in fields[0].split(","))
        going_on = {int(e): Fraction(share) for e, share in (p.split(":") for p in fields[1].split(",") if p != "-")}
        least = int(fields[2])
    except (ValueError, ZeroDivisionError):
        raise ValueError(f'rule "{text}": rungs are whole epochs ("1,3,6,12"), shares EPOCH:FRACTION ("1:2/3", or '
                         f'"-"), MIN a whole number') from None
    if list(rungs) != sorted(set(rungs)) or rungs[0] < 1:
        raise ValueError(f'rule "{text}": the rungs must be epochs from 1 up, in ascending order')
    if not set(going_on) <= set(rungs) or not all(0 < share <= 1 for share in going_on.values()):
        raise ValueError(f'rule "{text}": a share must name one of the rungs and lie in (0, 1]')
    if least < 1:
        raise ValueError(f'rule "{text}": MIN, the contenders enough to judge, is 1 or more')
    return rungs, going_on, least


def pruner_for(rule: tuple[tuple[int, ...], dict[int, Fraction], int]) -> ContenderHalving:
    pruner = ContenderHalving(default_epochs=0)  # every trial here draws its epochs
    pruner.RUNGS, pruner.GOING_ON, pruner.MIN_CONTENDERS = rule
    return pruner


def unpruned_trials(folder: Path) -> list[FrozenTrial]:
    """The trials of the unpruned search in `folder`, in their order (those stopped by a NaN loss or failed
    too: they trained their epochs and have no value)."""
    storage = f"sqlite:///{folder.resolve()}/studies/unet-opt.db"
    trials = sorted(optuna.load_study(study_name="default", storage=storage).trials, key=lambda t: t.number)
    if any(str(t.user_attrs.get("stop_reason", "")).startswith("pruned") for t in trials):
        raise SystemExit(f"{folder}: a pruned search; replay unpruned ones (its --pruner none folder)")
    return trials


def replay(trials: list[FrozenTrial], pruner: ContenderHalving) -> tuple[int, float]:
    """(epochs trained, best value of the trials that ran to their end) under `pruner`."""
    study = optuna.create_study(direction="maximize", pruner=pruner)  # in memory
    epochs, best = 0, float("-inf")
    for done in trials:
        scheduled = done.params["train.epochs"]
        study.enqueue_trial({"train.epochs": scheduled})
        trial = study.ask({"train.epochs": IntDistribution(1, 1000)})
        for epoch in sorted(done.intermediate_values):
            trial.report(done.intermediate_values[epoch], epoch)
            if epoch < scheduled and trial.should_prune():  # after the last epoch a stop saves nothing
                study.tell(trial, state=TrialState.PRUNED)
                epochs += epoch
                break
        else:
            epochs += len(done.intermediate_values)
            if done.state == TrialState.COMPLETE:
                study.tell(trial, done.value)
                best = max(best, done.value)
            else:
                study.tell(trial, state=TrialState.FAIL)
    return epochs, best


def score(rule_text: str, searches: dict[str, list[FrozenTrial]]) -> dict:
    results = {name: replay(trials, pruner_for(parse_rule(rule_text))) for name, trials in searches.items()}
    unpruned = {name: (sum(len(t.intermediate_values) for t in trials),
                       max(t.value for t in trials if t.state == TrialState.COMPLETE))
                for name, trials in searches.items()}
    return {"rule": rule_text, "epochs": {n: e for n, (e, _) in results.items()},
            "ratios": {n: unpruned[n][0] / e for n, (e, _) in results.items()},
            "ratio": sum(e for e, _ in unpruned.values()) / sum(e for e, _ in results.values()),
            "kept": sum(unpruned[n][1] - b <= WITHIN for n, (_, b) in results.items()),
            "shortfall": {n: b - unpruned[n][1] for n, (_, b) in results.items()}}


def grid() -> list[str]:
    rung_sets = ["1,3,6,12", "1,3,6,9,12,15", "1,2,4,8,16", "1,2,3,4,6,8,12,16", "1,3,9", "1,4,8,16",
                 "2,3,6,12", "2,4,8,16", "3,6,12"]
    shares = ["1/4", "1/3", "1/2", "2/3"]
    rules = []
    for rungs, first, later, least in itertools.product(rung_sets, shares, shares, (1, 2, 3)):
        named = [f"{rungs.split(',')[0]}:{first}"] + [f"{r}:{later}" for r in rungs.split(",")[1:]]
        rules.append(f"{rungs} {','.join(named)} {least}")
    return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="unpruned searches (pruning.py --keep: seed-N/none)")
    parser.add_argument("--rule", action="append", default=[], help=f'"RUNGS SHARES MIN" (default: "{DEFAULT_RULE}")')
    parser.add_argument("--grid", action="store_true", help="also replay a grid of rules; print the best 12")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for rule in args.rule:
        try:
            parse_rule(rule)
        except ValueError as e:
            parser.error(str(e))
    for folder in args.folders:
        if not (folder / "studies" / "unet-opt.db").is_file():
            parser.error(f"{folder} holds no search (no studies/unet-opt.db); pass pruning.py --keep's seed-N/none")
    searches = {str(folder): unpruned_trials(folder) for folder in args.folders}
    names = list(searches)
    rows = [score(rule, searches) for rule in args.rule or [DEFAULT_RULE]]
    if args.grid:
        ranked = sorted((score(rule, searches) for rule in grid()), key=lambda r: (-r["kept"], -r["ratio"]))
        rows += ranked[:12]
    print(f"{len(names)} unpruned searches: " + ", ".join(names))
    print(f"\n| rule | epochs per search | ratio per search | ratio, all | best within {WITHIN} (searches) | "
          "best against unpruned, per search |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        epochs = " / ".join(str(r["epochs"][n]) for n in names)
        ratios = " / ".join(f"{r['ratios'][n]:.2f}x" for n in names)
        shortfalls = " / ".join(f"{r['shortfall'][n]:+.3f}" for n in names)
        print(f"| {r['rule']} | {epochs} | {ratios} | {r['ratio']:.2f}x | {r['kept']} of {len(names)} | {shortfalls} |")


if __name__ == "__main__":
    main()
