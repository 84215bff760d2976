"""Segmentation itself: may import `config` and `errors`; never Optuna, MLflow or click, nor any layer above.

- `data/`: data sets (synthetic, folder layouts, class tables), the decode-once cache, a process's
  `DataCache`, batches and augmentation, splits, checks.
- `unet`, `encoders`, `model`: the plain UNet, a UNet decoder over a torchvision backbone, `build_model`.
- `losses`, `optim`: the training recipe's losses, class weights, optimizers and schedules.
- `metrics`: the confusion matrix and the scores derived from it.
- `scoring`: a model scored on a split at the data's evaluation frame.
- `native`: scoring at the photos' own resolution.
- `group`: the other ranks as a training step sees them (sums, the stop decision, DDP).
- `train`: `fit`, the epoch loop; `FitJob` and `Fit`, the message a run's processes get and what runs it.
"""
