"""What every trial of one worker needs, built once where the worker opens the study."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from unet_opt.config.paths import Paths
from unet_opt.config.schema import Config
from unet_opt.core.data import DataCache, split_indices
from unet_opt.parallel.placement import Placement
from unet_opt.parallel.ranks import RankGroup
from unet_opt.runs.runner import Fit
from unet_opt.study.storage import study_setup
from unet_opt.tracking import writer
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.writer import ArtifactWriter


@dataclass(frozen=True)
class SearchContext:
    """One worker's view of a search: the study and its stores, the split, where trials train, until when."""

    cfg: Config  # the base config every trial config is built from
    paths: Paths
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    tracker: Tracker
    parent_id: str  # the study's MLflow parent run
    split: dict[str, list[int]]  # the study's split, as indices of the data
    split_names: dict[str, list[str]]
    placement: Placement
    deadline: float  # time.time() after which no trial starts
    cache: DataCache
    fit: Fit  # what trains a trial on each rank: `train.fit_on_ranks`, or a test's stand-in
    ranks: RankGroup  # the worker's rank processes, kept across its trials
    writer: ArtifactWriter | None  # draws and logs each trial's files in the background; None: here

    def __enter__(self) -> SearchContext:
        return self

    def __exit__(self, *exc) -> None:
        """The rank processes go at once; the writer is waited for, so that every trial has its files."""
        self.ranks.close()
        if self.writer is not None:
            self.writer.close()

    @classmethod
    def build(cls, cfg: Config, paths: Paths, study: optuna.Study, storage: optuna.storages.BaseStorage,
              tracker: Tracker, parent_id: str, placement: Placement, deadline: float,
              cache: DataCache, fit: Fit) -> SearchContext:
        """`cache`: the worker's data cache, holding the base config's data (loaded and checked already)."""
        split_names = study_setup(storage, study.study_name)["split"]
        names = cache.get(cfg.data, cfg.model.depth).names
        return cls(cfg, paths, study, storage, tracker, parent_id, split_indices(split_names, names),
                   split_names, placement, deadline, cache, fit, RankGroup(placement, start=True),
                   ArtifactWriter(tracker.uri) if writer.draws_in_background(placement) else None)
