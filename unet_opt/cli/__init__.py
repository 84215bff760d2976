"""The `unet-opt` command line, the top layer: may import every package below it.

- `launch`: the console script, which imports `app` (a Ctrl-C meanwhile: `interrupted`, exit 130).
- `app`: the command group, its global options, `main` (every user mistake as one `error:` line, exit 2).
- `study_commands`: `search`, `report`, `studies`, `ui`.
- `model_commands`: `train`, `retrain`, `evaluate`, `predict`.
- `data_commands`: `data check`, `data prepare`.
- `options`: the options several commands share; exit codes.
- `console`: tables and the end-of-search summary.

Heavy libraries (torch, Optuna, MLflow) are imported inside the commands that need them.
"""
