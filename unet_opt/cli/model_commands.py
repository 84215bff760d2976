"""The commands of a model: `train` (a baseline), `retrain --best`, `evaluate`, `predict`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from unet_opt.cli.console import metric_rows, print_table
from unet_opt.cli.options import (
    OUT_FOLDER,
    Session,
    data_option,
    option,
    output_options,
    overwrite_option,
    placement_of,
    placement_options,
    sets_option,
    storage_option,
    tracking_option,
)
from unet_opt.config.rules import check_name
from unet_opt.config.space_file import check_data_folder_named, load_config

if TYPE_CHECKING:  # for the annotations only: the CLI starts without torch
    from unet_opt.config.paths import Paths
    from unet_opt.runs.runner import RunSummary


@click.command()
@option("--space", default="default", show_default=True,
        help="TOML file (or default, drone, drone-cpu, binary); its fixed values are used, its [space] ignored.")
@data_option
@tracking_option
@placement_options
@sets_option
@click.pass_obj
@output_options
def train(session: Session, space, data, tracking_uri, device, gpus, procs, sets) -> int:
    """One run with fixed params (a baseline), logged to MLflow like a trial, tested on the test split.

    \b
    Examples:
      unet-opt train --set train.lr=0.003 --set train.epochs=20
      unet-opt report --best-config best.toml && unet-opt train --space best.toml
    """
    flags = {"data.dataset": data, "search.tracking_uri": tracking_uri, "train.device": device}
    cfg = load_config(space, {k: v for k, v in flags.items() if v is not None}, sets)
    if data is None:
        check_data_folder_named(cfg)
    placement = placement_of(cfg.train.device, gpus, procs)
    from unet_opt.runs.baseline import train_baseline
    from unet_opt.runs.runner import epoch_count

    r = train_baseline(cfg, session.paths, placement)
    click.echo(f"\nstopped: {r.fit.stop_reason} after {epoch_count(r.fit.epochs_run)}; best epoch {r.fit.best_epoch}")
    print_table(["metric", "value"], metric_rows({k: v for k, v in {**r.fit.best_metrics, **r.test}.items()
                                                  if k.startswith(("val_", "test_")) and k != "val_loss"}))
    click.echo(f"MLflow run: {r.run_id} (experiment '{r.experiment}')")
    if r.checkpoint:
        click.echo(f"checkpoint: {r.checkpoint}")
    click.echo(f"see it:     {run_page(session.paths, cfg.search.tracking_uri, r)}")
    return 0


@click.command()
@option("--best", is_flag=True, required=True, help="Retrain the study's best trial.")
@option("--study", show_default="the only study in the storage", help="Study name.")
@storage_option
@tracking_option
@option("--epochs", type=click.IntRange(min=1, max=10_000), show_default="the trial's best epoch",
        help="Epochs to train.")
@option("--name", "model_name", show_default="unet-opt-<study>", help="Registered model name.")
@option("--promote", is_flag=True, help="Move @champion to the new version even if the version it names is a "
        "retrain of this study that tests better.")
@option("--data", "dataset", metavar="PATH", show_default="the study's data folder",
        help="Where the study's data folder is now, if it moved (its files must be the study's).")
@placement_options
@click.pass_obj
@output_options
def retrain(session: Session, best, study, storage, tracking_uri, epochs, model_name, dataset, promote, device,
            gpus, procs) -> int:
    """Retrain the best trial on train+val, test it on the held-out split, register it as @champion (unless
    the model @champion names is a retrain of this study that tests better: --promote moves it anyway).

    \b
    Examples:
      unet-opt retrain --best
      unet-opt retrain --best --study drone --epochs 60
    """
    if model_name is not None:
        check_name(model_name, "--name")
    placement = placement_of(device, gpus, procs)
    from unet_opt.runs.runner import epoch_count
    from unet_opt.study.retrain import retrain_best

    paths = session.paths
    r = retrain_best(paths, paths.storage_url(storage), paths.tracking_uri(tracking_uri), study, placement,
                     epochs, model_name, data=dataset, promote=promote)
    click.echo(f"\nretrained trial #{r.trial} (experiment '{r.experiment}') for {epoch_count(r.fit.epochs_run)}")
    print_table(["metric", "value"], metric_rows(r.test))
    click.echo(f"MLflow run:       {r.run_id}")
    reg = r.registration
    if reg.kept:
        click.echo(f"registered model: models:/{reg.model}/{reg.version}; @champion stays on {reg.kept}. To move "
                   f"it, set it on version {reg.version} in the MLflow UI's model registry, or retrain with --promote")
    else:
        replaced = f"; it was {reg.overruled}, and --promote moved it" if reg.overruled else \
            f"; it was {reg.before}" if reg.before else ""
        click.echo(f"registered model: models:/{reg.model}@champion (version {reg.version}{replaced})")
    click.echo(f"checkpoint:       {r.checkpoint}  (torch.load(..., weights_only=True))")
    click.echo(f"see it:           {run_page(paths, tracking_uri, r)}")
    return 0


def run_page(paths: Paths, tracking_uri: str | None, r: RunSummary) -> str:
    """How to see a retrain's or a baseline's run: `unet-opt ui` and its page, or the server's page."""
    from unet_opt.tracking.ui import how_to_see_run, ui_command_line

    return how_to_see_run(ui_command_line(paths.home, tracking_uri), paths.tracking_uri(tracking_uri),
                          r.experiment_id, r.run_id)


@click.command()
@click.argument("model")
@option("--data", "dataset", show_default="the model's own data set", help="Data to evaluate on.")
@option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
        help="Images to score: a split stored with the model, or all of them.")
@option("--frame", type=click.Choice(["eval", "native"]), default="eval", show_default=True,
        help="Where to score: eval, the frame the model was judged at (its study's evaluation frame); native, "
             "each photo at its own size against its original mask (a data folder's figure to quote).")
@option("--out", type=OUT_FOLDER, default="evaluation", show_default=True,
        help="Folder for the confusion matrix PNG and CSV and the per-class CSV.")
@overwrite_option
@tracking_option
@click.pass_obj
@output_options
def evaluate(session: Session, model, dataset, split, frame, out, overwrite, tracking_uri) -> int:
    """Scores of MODEL on one split. MODEL: models:/NAME@ALIAS, models:/NAME/VERSION, the MLflow run id of a
    retrain or train run, or a checkpoint file.

    \b
    Examples:
      unet-opt evaluate models:/unet-opt-default@champion
      unet-opt evaluate studies/checkpoints/unet-opt-drone-1a2b3c4d.pt --frame native --out eval-native
    """
    from unet_opt.runs.inference import EVALUATION_FILES, check_frame, check_outputs, evaluate_checkpoint, resolve_model

    ck = resolve_model(model, session.paths.tracking_uri(tracking_uri), session.paths.artifacts)
    check_frame(ck, dataset, frame)  # the model and the frame first: they are what a user mistyped most
    check_outputs([out / name for name in EVALUATION_FILES], overwrite)
    ev = evaluate_checkpoint(ck, session.paths.cache, out, split, dataset, frame, model)
    if ev.caution:
        click.echo(f"note: {ev.caution}")
    click.echo(f"scored at {ev.frame}")
    print_table(["metric", "value"], metric_rows(ev.metrics))
    click.echo("")
    print_table(["class", "dice", "iou", "precision", "recall", "pixels"],
                [[str(r["class"]), *(f"{r[k]:.4f}" for k in ("dice", "iou", "precision", "recall")), str(r["pixels"])]
                 for r in ev.per_class])
    click.echo("\nwritten: " + ", ".join(str(p) for p in ev.written))
    return 0


@click.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@option("--out", type=OUT_FOLDER, default="predictions", show_default=True,
        help="Folder for the masks, colour masks and overlays.")
@overwrite_option
@tracking_option
@click.pass_obj
@output_options
def predict(session: Session, model, images, out, overwrite, tracking_uri) -> int:
    """Masks for IMAGES at their own resolution: class indices, class colours and an overlay. MODEL:
    models:/NAME@ALIAS, models:/NAME/VERSION, the MLflow run id of a retrain or train run, or a checkpoint file.

    \b
    Examples:
      unet-opt predict models:/unet-opt-default@champion photo1.jpg photo2.jpg
      unet-opt predict models:/unet-opt-drone@champion flights/*.jpg --out masks
    """
    from unet_opt.core.data.images import read_rgb
    from unet_opt.runs.inference import check_outputs, predict_image, prediction_files, resolve_model

    for image in images:  # every image, the model and every output are checked before anything is written
        read_rgb(image)
    ck = resolve_model(model, session.paths.tracking_uri(tracking_uri), session.paths.artifacts)
    check_outputs([path for image in images for path in prediction_files(image, out)], overwrite)  # the inputs first
    for image in images:
        written = predict_image(ck, image, out)
        click.echo(f"{image}: " + ", ".join(str(p) for p in written))
    return 0
