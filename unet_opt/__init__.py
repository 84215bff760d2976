"""unet-opt: tune and track UNet segmentation models with Optuna and MLflow.

Packages by layer, each importing only from the layers below it (`tests/test_layers.py` holds them to it):

- `cli`: the `unet-opt` commands: parse, build the config, call one library function, print.
- `study`: the Optuna side: a search, its trials' ledger in both stores, `retrain --best`, reports.
- `runs`: one path for training, testing, checkpointing, logging and registering a run; using a model.
- `tracking`: MLflow (runs, stores, the UI), the report files and figures, their background writer.
- `parallel`: where a run trains: placements, the rank processes, this machine's processes.
- `core`: data, model, losses, optimizers, metrics and the training loop: no Optuna, MLflow or click.
- `config`: the configuration's dataclasses, space files and their rules, the project folder's paths.

Flat modules: `runtime` (the one process-wide setup), `progress` (live bars), `errors` (`UserError`).
Importing the package imports nothing else.
"""

__version__ = "0.1.0"
