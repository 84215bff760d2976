"""What every trial of one worker needs, built once where the worker opens the study."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna

from unet_opt import writer
from unet_opt.config import Config
from unet_opt.data import SegmentationData, load_data, split_indices
from unet_opt.distributed import Placement
from unet_opt.paths import Paths
from unet_opt.ranks import RankGroup
from unet_opt.runs import Fit
from unet_opt.study.storage import study_setup
from unet_opt.tracking import Tracker
from unet_opt.writer import ArtifactWriter


class DataCache:
    """Data sets by the config that shapes them, so trials with the same image size share one."""

    def __init__(self, cache_dir: Path, max_entries: int = 4):
        self.entries: dict[str, SegmentationData] = {}
        self.cache_dir, self.max_entries = cache_dir, max_entries

    def get(self, cfg: Config) -> SegmentationData:
        key = repr((cfg.data, cfg.model.depth))
        if key not in self.entries:
            self.put(cfg, load_data(cfg.data, cfg.model.depth, self.cache_dir))
        return self.entries[key]

    def put(self, cfg: Config, data: SegmentationData) -> None:
        if len(self.entries) >= self.max_entries:
            self.entries.pop(next(iter(self.entries)))
        self.entries[repr((cfg.data, cfg.model.depth))] = data


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
              first_data: SegmentationData, fit: Fit) -> SearchContext:
        """`first_data`: the base config's data, already loaded and checked; trials at its size reuse it."""
        split_names = study_setup(storage, study.study_name)["split"]
        cache = DataCache(paths.cache)
        cache.put(cfg, first_data)
        return cls(cfg, paths, study, storage, tracker, parent_id, split_indices(split_names, first_data.names),
                   split_names, placement, deadline, cache, fit, RankGroup(placement, start=True),
                   ArtifactWriter(tracker.uri) if writer.draws_in_background(placement) else None)
