"""The Optuna side of unet-opt, one job per module: may import every layer but `cli`.

- `storage`: the study storage, creating or joining a study, loading one that must exist.
- `ledger`: a trial's life in both stores (`TrialLedger`): the only writer of a trial's state.
- `pruning`: the sampler and the pruner.
- `context`: what every trial of a worker needs, built once (`SearchContext`).
- `objective`: one trial: sample, train through the worker's `Runner`, record through the ledger.
- `loop`: one worker's ask/train/tell loop.
- `workers`: `--workers K` processes on one study.
- `reconcile`: the parent run made to agree with the study, and stores that do not belong together refused.
- `search`: `run_search`, the entry point of `unet-opt search`.
- `retrain`: `retrain --best`; `best_config`: the best trial's config (`report --best-config`).
- `figures`: `unet-opt figures`, a pruned trial's figures drawn on demand.
- `states`: the one vocabulary of trial states (complete, pruned, fail, interrupted, running).
- `dashboard`: the live view of each study (optuna-dashboard) that `unet-opt ui` serves.
- `summary`: what a study holds, as the summary, `report`, `studies` and the parent run's files.

Nothing is imported here, so `report` does not pay for torch.
"""
