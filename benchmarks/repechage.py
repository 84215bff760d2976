"""Experiment (not in the product): successive halving with repechage, on the quick start's 30 trials.

Asynchronous successive halving (ASHA): every new trial trains to its first rung (epoch 1) and pauses,
told PRUNED as the product would record it. Before each new trial, and after the last, a paused trial is
resumed to its next stop (the next rung, or its end) when it is in the top 1/ETA of the values at its rung
of the trials that reached that rung and are scheduled past FACTOR times it, itself included (the
contenders of `ContenderHalving`), and there are MIN_N values there or more. A resumed trial that ends is
added to the study as COMPLETE with its params, so TPE learns from it (a second trial for the same config,
under a number of its own). With `--finish`, after the last trial every paused trial whose value so far
is above the best ended one is resumed to its end, best first, so that no paused trial could beat the best.

A resumed trial is retrained from scratch to where it paused (training is deterministic: its best-so-far
values are checked equal at every epoch) and only its epochs beyond are counted, so the epochs and best
values are those of a product that kept each paused trial's weights and optimizer; the wall time is not.
A paused trial's PRUNED record holds its first epoch only; the second trial under a new number shifts
the trial seeds that follow, as it would in a product that recorded resumed trials this way.

`--view budget` hands TPE the trials as they stand at one budget instead (BOHB's rule): the largest of
the rungs and the end at which 7 trials have a value (a trial that ended sooner counts with its final
value); the others are PRUNED there with their curves.

    python benchmarks/repechage.py --seed 0 [--eta 3] [--factor 2] [--view budget] [--finish]

benchmarks/README.md ("Repechage measured") has the figures and why they settled what they did.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from unet_opt.config.space_file import load_config
from unet_opt.core.data import DataCache
from unet_opt.core.data.splits import make_split, split_indices
from unet_opt.core.train import fit
from unet_opt.study.objective import suggest
from unet_opt.study.pruning import make_sampler

RUNGS = (1, 3, 9)
MIN_AT_BUDGET = 7  # BOHB: the budget TPE is fitted at needs this many values


class Trial:
    """One sampled config as the scheduler sees it: where it paused and its best-so-far curve."""

    def __init__(self, params: dict, distributions: dict, scheduled: int):
        self.params, self.distributions, self.scheduled = params, distributions, scheduled
        self.at, self.curve, self.ended, self.value = 0, {}, False, 0.0

    def next_stop(self) -> int:
        return next((r for r in RUNGS if self.at < r < self.scheduled), self.scheduled)

    def value_at(self, budget: int | None) -> float | None:
        """Its value at `budget` epochs (None: at its end), or None when it has none there yet."""
        if budget is not None and self.at >= budget:
            return self.curve[budget]
        return self.value if self.ended else None


class Search:
    def __init__(self, seed: int, eta: float, factor: float, min_n: int, view: str):
        self.eta, self.factor, self.min_n = eta, factor, min_n
        self.cfg = load_config("default", {"search.seed": seed}).with_eval_size()
        self.cache = DataCache(None)
        names = self.cache.get(self.cfg.data, self.cfg.model.depth).names
        d = self.cfg.data
        split = split_indices(make_split(names, d.val_fraction, d.test_fraction, d.split_seed), names)
        self.split = {"train": split["train"], "val": split["val"]}
        sampler = make_sampler(self.cfg)
        self.study = optuna.create_study(direction="maximize",
                                         sampler=BudgetView(sampler, self) if view == "budget" else sampler)
        self.trials: dict[int, Trial] = {}
        self.epochs = 0

    def advance(self, number: int) -> None:
        """Train trial `number` to its next stop (from scratch: see the module's note), counting the new epochs."""
        t = self.trials[number]
        cfg = self.cfg.for_trial(t.params, number)
        stop, curve = t.next_stop(), {}

        def on_epoch(epoch: int, metrics: dict, best: float | None) -> bool:
            curve[epoch] = 0.0 if best is None else best
            return epoch >= stop

        result = fit(cfg, self.cache.get(cfg.data, cfg.model.depth), self.split, on_epoch=on_epoch)
        assert all(abs(curve[e] - v) < 1e-6 for e, v in t.curve.items()), f"trial {number} trained differently"
        reached = max(curve, default=t.at)  # a NaN loss in its first epoch reports nothing
        self.epochs += reached - t.at
        t.at, t.curve, t.ended = reached, curve, result.stop_reason != "callback"
        t.value = result.best_metrics.get(self.cfg.search.goal.metric, 0.0)
        print(f"  #{number}: {t.at} of {t.scheduled} epochs, " +
              (f"ended at {t.value:.4f}" if t.ended else f"paused at {curve[t.at]:.4f}"), flush=True)

    def promotable(self) -> int | None:
        """The paused trial with the best value among those in the top 1/eta of their rung, or None."""
        best = None
        for n, t in self.trials.items():
            if t.ended:
                continue
            value = t.curve[t.at]  # a paused trial has reached a rung
            ranked = sorted([value] + [o.curve[t.at] for m, o in self.trials.items()
                                       if m != n and t.at in o.curve and o.scheduled > t.at * self.factor],
                            reverse=True)
            keep = math.floor(len(ranked) / self.eta)
            if len(ranked) >= self.min_n and keep >= 1 and value >= ranked[keep - 1]:
                best = max(best or (value, n), (value, n))
        return None if best is None else best[1]

    def run(self, count: int, finish: bool) -> dict:
        for i in range(count):
            trial = self.study.ask()
            params = suggest(trial, self.cfg.space)
            scheduled = int(params.get("train.epochs", self.cfg.train.epochs))
            self.trials[trial.number] = Trial(params, dict(trial.distributions), scheduled)
            print(f"trial {i + 1}/{count} (#{trial.number}): {params}", flush=True)
            self.advance(trial.number)
            t = self.trials[trial.number]
            for epoch, value in t.curve.items():
                trial.report(value, epoch)
            if t.ended:
                self.study.tell(trial, t.value)
            else:
                self.study.tell(trial, state=TrialState.PRUNED)
            while (n := self.promotable()) is not None:
                self.resume(n)
        while finish and (n := self.ahead_of_the_best()) is not None:
            while not self.trials[n].ended:
                self.resume(n)
        value, number = max(((t.value, n) for n, t in self.trials.items() if t.ended), default=(0.0, None))
        return {"epochs": self.epochs, "best": round(value, 4), "best_trial": number,
                "complete": sum(t.ended for t in self.trials.values()),
                "sampled": sum(t.scheduled for t in self.trials.values())}

    def resume(self, number: int) -> None:
        self.advance(number)
        t = self.trials[number]
        if t.ended:
            self.study.add_trial(optuna.trial.create_trial(
                params=t.params, distributions=t.distributions, value=t.value, intermediate_values=t.curve))

    def ahead_of_the_best(self) -> int | None:
        """The paused trial with the best value so far, if it is above every ended trial's."""
        best = max((t.value for t in self.trials.values() if t.ended), default=-math.inf)
        value, number = max(((t.curve[t.at], n) for n, t in self.trials.items() if not t.ended),
                            default=(-math.inf, None))
        return number if value > best else None


class BudgetView(optuna.samplers.BaseSampler):
    """The search's sampler, fitted on the trials as they stand at one budget (see the module's note)."""

    def __init__(self, inner: optuna.samplers.BaseSampler, search: Search):
        self.inner, self.search = inner, search
        self.view: optuna.Study | None = None
        self.view_trial: FrozenTrial | None = None

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)  # seeds the sampler by the real trial's number
        trials = [t for t in self.search.trials.values() if t.curve]
        budget: int | None = RUNGS[0]
        for b in (*RUNGS, None):
            if sum(t.value_at(b) is not None for t in trials) >= MIN_AT_BUDGET:
                budget = b
        self.view = optuna.create_study(direction="maximize")
        for t in trials:
            value = t.value_at(budget)
            self.view.add_trial(optuna.trial.create_trial(
                params=t.params, distributions=t.distributions, value=value,
                state=TrialState.COMPLETE if value is not None else TrialState.PRUNED,
                intermediate_values=t.curve if value is None else None))
        running = self.view.ask()  # where TPE keeps its notes on the trial it samples
        self.view_trial = self.view._storage.get_trial(running._trial_id)

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(self.view, self.view_trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(self.view, self.view_trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(self.view, self.view_trial, param_name, param_distribution)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--eta", type=float, default=3, help="the top 1/eta of a rung goes on")
    parser.add_argument("--factor", type=float, default=2, help="contenders are scheduled past factor x the rung")
    parser.add_argument("--min-n", type=int, default=3, help="values a rung needs before it promotes")
    parser.add_argument("--view", choices=("all", "budget"), default="all", help="what TPE is fitted on")
    parser.add_argument("--finish", action="store_true", help="end the paused trials ahead of the best")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    summary = Search(args.seed, args.eta, args.factor, args.min_n, args.view).run(args.trials, args.finish)
    print(json.dumps({**vars(args), **summary, "wall": round(time.perf_counter() - start)}))


if __name__ == "__main__":
    main()
