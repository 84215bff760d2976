"""The Optuna side of unet-opt, one job per module.

- `storage`: the study storage, creating or joining a study, loading one that must exist.
- `pruning`: the sampler and the pruner.
- `context`: what every trial of a worker needs, built once (`SearchContext`), and the data cache.
- `objective`: one trial: sample, train through `runs`, record in both stores.
- `loop`: one worker's ask/train/tell loop and the clean-up of trials dead workers left behind.
- `workers`: `--workers K` processes on one study.
- `reconcile`: the two stores made to agree whenever a study is opened, and refused when they do not belong together.
- `search`: `run_search`, the entry point of `unet-opt search`.
- `summary`: what a study holds, as the summary, `report`, `studies` and the parent run's files.

Nothing is imported here, so `report` does not pay for torch.
"""
