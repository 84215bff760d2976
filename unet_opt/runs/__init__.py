"""Runs of one config: may import `tracking`, `parallel`, `core`, `progress`, `runtime`, `config`, `errors`.

- `runner`: the one path for "train one config, test, checkpoint, log, register" (`Runner`, `RunSpec`),
  used by a trial, `retrain` and `train`; the pre-flight checks.
- `reports`: what a trained model's report is made of (its predictions at the evaluation frame).
- `baseline`: `unet-opt train`.
- `checkpoint`, `inference`: weights-only checkpoints; `evaluate` and `predict`.
"""
