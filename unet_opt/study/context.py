"""What every trial of one worker needs, built once where the worker opens the study."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from unet_opt.config.schema import Config
from unet_opt.core.data import split_indices
from unet_opt.runs.runner import Runner, check_frame
from unet_opt.study.ledger import TrialLedger
from unet_opt.study.storage import study_setup


@dataclass(frozen=True)
class SearchContext:
    """One worker's view of a search: the study and its ledger (both stores), the split, the runner that
    trains the trials (data cache, rank processes, writer), and until when to start new trials."""

    cfg: Config  # the base config every trial config is built from
    study: optuna.Study
    ledger: TrialLedger
    split_names: dict[str, list[str]]  # the study's split, by image name
    split: dict[str, list[int]]  # the same split, as indices of the data
    runner: Runner
    deadline: float  # time.time() after which no trial starts

    @classmethod
    def open(cls, cfg: Config, ledger: TrialLedger, runner: Runner, deadline: float) -> SearchContext:
        """The context of a worker whose runner has the base config's data loaded (and checked) already."""
        split_names = study_setup(ledger.storage, ledger.study.study_name)["split"]
        split = split_indices(split_names, runner.data(check_frame(cfg)).names)
        return cls(cfg, ledger.study, ledger, split_names, split, runner, deadline)
