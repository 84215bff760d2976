"""The sampler and the pruners a study runs with."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from unet_opt.config.schema import Config

SHARE_NAMES = {Fraction(1, 3): "third", Fraction(2, 3): "two thirds"}
MIN_STUDY_PEERS = 4  # the study-wide bottom-quarter rule judges a trial only against this many others or more


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Draws trial N with a sampler seeded from the study's seed and N.

    A sampler seeded once per process restarts its random stream in every process, so a resumed or
    extended search, a second worker and another machine would all draw the trials already drawn. Trial
    numbers are unique in a study, so this draws new points in every process, and a search run again
    from scratch draws the same ones.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self.make, self.seed = make, seed
        self.inner = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # called by Optuna before anything of trial N is sampled
        seed = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
        self.inner = self.make(seed)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: list[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def make_sampler(cfg: Config) -> optuna.samplers.BaseSampler:
    s = cfg.search
    if s.sampler == "random":
        return TrialSeededSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), s.seed)
    return TrialSeededSampler(lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials),
                              s.seed)


def max_epochs(cfg: Config) -> int:
    p = cfg.space.get("train.epochs")
    return int(p.high if p.type != "categorical" else max(p.choices)) if p else cfg.train.epochs


class StudyHyperband(optuna.pruners.BasePruner):
    """Optuna's Hyperband, and where its last bracket first judges, the bottom quarter of the study too.

    Hyperband judges a trial only against trials of its own bracket, so the first trials of a bracket
    have no one to lose to and run on: on the embedded data trial 1 ran 11-15 epochs at a Dice of
    0.2-0.44 on sampler seeds 0-3, far behind trial 0 after 3 epochs. At epoch
    3**(brackets - 1), which every bracket has judged its trials by, a trial is also pruned when its
    value is in the bottom quarter of every other trial's at that epoch (README, Measured: below the
    median instead pruned a slow climber that would have led the sampler to the best trial).
    """

    def __init__(self, brackets: int, max_epochs: int):
        # Optuna makes floor(log3(max_resource)) + 1 brackets, so 3**b - 1 is the largest max_resource
        # that makes b; fewer when the space's epochs end sooner. Every bracket judges again after
        # epochs 9, 27, ... for trials that run that long.
        max_resource = min(max_epochs, 3 ** brackets - 1)
        self.hyperband = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource,
                                                        reduction_factor=3)
        self.study_epoch = 1  # 3**(brackets - 1): where the last bracket first judges
        self.reason = ""  # the rule that pruned the trial asked last
        while self.study_epoch * 3 <= max_resource:
            self.study_epoch *= 3

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        # Hyperband first, always: it records the trial's rung results, which later trials are judged on
        if self.hyperband.prune(study, trial):
            self.reason = "bracket rung"
            return True
        peers = self.in_bottom_quarter(study, trial)
        if peers:
            self.reason = f"bottom quarter of {peers} trials"
        return bool(peers)

    def in_bottom_quarter(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
        """How many other trials `trial` is in the bottom quarter of at the study-wide epoch (0: it is not,
        or fewer than MIN_STUDY_PEERS others reached that epoch: a quarter of one or two is no judgement)."""
        epoch = trial.last_step
        if epoch != self.study_epoch:
            return 0
        others = [t.intermediate_values[epoch] for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number and epoch in t.intermediate_values]
        others = [v for v in others if math.isfinite(v)]
        if len(others) < MIN_STUDY_PEERS:
            return 0
        value = trial.intermediate_values[epoch]
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            return len(others) if value < float(np.percentile(others, 25)) else 0
        return len(others) if value > float(np.percentile(others, 75)) else 0


class ContenderHalving(optuna.pruners.BasePruner):
    """Successive halving judged against contenders: after epochs 1, 3, 6 and 12, a trial goes on if its value
    is in the top share of the values there of the trials scheduled to run past the next of those epochs
    (after epoch 12: past 24), itself included: the top two thirds after epoch 1, the top third after the
    others. With fewer than MIN_CONTENDERS such others, it goes on.

    A trial's learning rate decays to zero over its own epochs, so a trial of 3 epochs looks better after
    epoch 1 than one of 15 that will end far above it. Under Hyperband, such a trial set the bar that pruned
    the best of the start-up trials on seed 0 (benchmarks/README.md, "Why 4x within 0.01 is out of reach").
    Here a short trial is still judged, but never serves as another's yardstick. Rungs 6 and 12 (9 before,
    which had no contenders in the default space) judge the long trials again (benchmarks/README.md, "Rungs
    at epochs 6 and 12"). After epoch 1 only the bottom third stops: some trials under a Dice of 0.06
    there ended at 0.75-0.81 in unpruned searches (a high learning rate starts slowly); over seeds 0-4 the
    mean best rose from 0.856 to 0.867 for 2 % more epochs, mostly seed 1's gain (benchmarks/README.md, "A
    gentler first rung").
    """

    RUNGS = (1, 3, 6, 12)
    GOING_ON = {1: Fraction(2, 3)}  # the share of the ranked values that goes on; a third at the other rungs
    MIN_CONTENDERS = 3

    def __init__(self, default_epochs: int):
        self.default_epochs = default_epochs  # a trial's epochs when the space does not draw them
        self.reason = ""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        epoch = trial.last_step
        if epoch not in self.RUNGS:
            return False
        value = trial.intermediate_values[epoch]
        if not math.isfinite(value):
            self.reason = "no finite value"
            return True
        past = self.next_rung(epoch)
        contenders = [t.intermediate_values[epoch] for t in study.get_trials(deepcopy=False)
                      if t.number != trial.number and epoch in t.intermediate_values
                      and self.scheduled(t) > past and math.isfinite(t.intermediate_values[epoch])]
        if len(contenders) < self.MIN_CONTENDERS:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        ranked = sorted([*contenders, value], reverse=maximize)
        share = self.GOING_ON.get(epoch, Fraction(1, 3))
        bar = ranked[math.ceil(len(ranked) * share) - 1]
        self.reason = f"outside the top {SHARE_NAMES.get(share, share)} among {len(contenders)} contenders"
        return value < bar if maximize else value > bar

    def next_rung(self, epoch: int) -> int:
        """The rung after `epoch`'s (twice it after the last): a contender is scheduled to run past it."""
        return next((r for r in self.RUNGS if r > epoch), 2 * epoch)

    def scheduled(self, trial: optuna.trial.FrozenTrial) -> int:
        """The epochs `trial` was drawn to run (whether or not it ran them)."""
        return int(trial.params.get("train.epochs", self.default_epochs))


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    name = cfg.search.pruner
    if name == "contenders":
        return ContenderHalving(cfg.train.epochs)
    if name == "hyperband":
        # The default 2 brackets (README, Measured): a third, first judging after epoch 9, spent more
        # epochs on 3 seeds and found no better trial.
        return StudyHyperband(cfg.search.brackets, max_epochs(cfg))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def prune_reason(pruner: optuna.pruners.BasePruner) -> str:
    """The rule by which `pruner` pruned the trial it was asked about last."""
    if isinstance(pruner, (StudyHyperband, ContenderHalving)):
        return pruner.reason
    if isinstance(pruner, optuna.pruners.MedianPruner):
        return "below the median"
    return "halving rung"
