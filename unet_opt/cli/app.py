"""`unet-opt`: parse, build the config, call one library function, print.

Every user mistake ends as one line `error: ...` on stderr with exit code 2; Ctrl-C exits 130.
Heavy modules (torch, Optuna, MLflow) are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

import click

from unet_opt import __version__, runtime
from unet_opt.cli.console import fmt, print_summary, print_table
from unet_opt.cli.data_commands import data
from unet_opt.cli.options import (
    Session,
    data_option,
    option,
    overwrite_option,
    placement_of,
    placement_options,
    sets_option,
    space_option,
    storage_option,
    tracking_option,
    verbose_option,
)
from unet_opt.config.paths import Paths, redact_url
from unet_opt.config.rules import check_name
from unet_opt.config.space_file import load_config
from unet_opt.errors import Terminated, UserError

EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="unet-opt")
@option("--home", type=click.Path(file_okay=False), envvar="UNET_OPT_HOME", show_envvar=True,
        show_default="the current directory", help="Folder holding studies/ and mlruns/.")
@option("-v", "--verbose", is_flag=True, help="Also show debug messages and tracebacks.")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: bool) -> None:
    """Tune and track UNet segmentation models with Optuna and MLflow."""
    runtime.setup(verbose)
    if home and not Path(home).is_dir():  # a new folder asked for by name is made, inside one that exists
        if not Path(home).parent.is_dir():
            raise UserError(f"folder {Path(home).parent} does not exist; create it first or fix --home")
        Path(home).mkdir()
    ctx.obj = Session(Paths.resolve(home), verbose)


@cli.command()
@option("--trials", type=click.IntRange(min=1), show_default="30", help="Finished trials the study should have.")
@option("--timeout", type=click.FloatRange(min=0, min_open=True), show_default="none",
        help="Start no new trial after S seconds.")
@space_option
@data_option
@option("--study", show_default="the space file's name",
        help="Study name; its MLflow experiment is unet-opt-<study>.")
@storage_option
@tracking_option
@option("--sampler", type=click.Choice(["tpe", "random"]), show_default="tpe", help="Optuna sampler.")
@option("--pruner", type=click.Choice(["hyperband", "median", "halving", "none"]), show_default="hyperband",
        help="Optuna pruner.")
@option("--seed", type=int, show_default="0", help="Sampler seed.")
@placement_options
@option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
        help="Trials at once on this machine, each on its own share of the GPUs (or CPU cores).")
@sets_option
@click.pass_obj
@verbose_option
def search(session: Session, trials, timeout, space, data, study, storage, tracking_uri, sampler, pruner, seed,
           device, gpus, procs, workers, sets) -> int:
    """Run (or continue) a study until it has --trials finished trials."""
    flags = {"search.trials": trials, "search.timeout": timeout, "data.dataset": data, "search.study": study,
             "search.storage": storage, "search.tracking_uri": tracking_uri, "search.sampler": sampler,
             "search.pruner": pruner, "search.seed": seed, "train.device": device}
    cfg = load_config(space, {k: v for k, v in flags.items() if v is not None}, sets)
    placement = placement_of(cfg.train.device, gpus, procs)
    from unet_opt.study.search import run_search  # heavy imports only once the input is known to be good

    started = time.monotonic()
    summary = run_search(cfg, session.paths, placement, workers, session.verbose)
    print_summary(summary, time.monotonic() - started)
    if summary.interrupted:
        return EXIT_TERMINATED if summary.terminated else EXIT_INTERRUPTED
    return 1 if summary.failed_out else 0


@cli.command()
@option("--study", show_default="the only study in the storage", help="Study name.")
@storage_option
@option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.pass_obj
@verbose_option
def report(session: Session, study, storage, as_json) -> int:
    """The best trial and a table of every trial of a study."""
    from unet_opt.study.summary import study_report

    rep = study_report(session.paths.storage_url(storage), study)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return 0
    metric = rep["metric"] or "value"
    best = rep["best"]
    click.echo(f"study '{rep['study']}' ({rep['direction']} {metric}), {len(rep['trials'])} trials")
    if best:
        params = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        click.echo(f"best: #{best['number']}  {metric} = {best['value']:.4f}  {params}")
    names = sorted({k for t in rep["trials"] for k in t["params"]})
    header = ["#", "state", metric, "epochs", *names, "reason"]
    rows = [[str(t["number"]), t["state"], "" if t["value"] is None else f"{t['value']:.4f}",
             "" if t["epochs_run"] is None else str(t["epochs_run"]),
             *[fmt(t["params"].get(n, "")) for n in names], t["reason"] or ""] for t in rep["trials"]]
    print_table(header, rows)
    return 0


@cli.command()
@storage_option
@click.pass_obj
@verbose_option
def studies(session: Session, storage) -> int:
    """Every study in the storage, with trial counts by state and the best value."""
    from unet_opt.study.summary import list_studies

    rows = list_studies(session.paths.storage_url(storage))
    if not rows:
        click.echo("no studies yet; run `unet-opt search`")
        return 0
    print_table(["study", "trials", "complete", "pruned", "fail", "running", "best", "started"],
                [[r["study"], str(r["trials"]), str(r["COMPLETE"]), str(r["PRUNED"]), str(r["FAIL"]),
                  str(r["RUNNING"]), "" if r["best"] is None else f"{r['best']:.4f}", r["started"]] for r in rows])
    return 0


@cli.command()
@option("--host", default="127.0.0.1", show_default=True,
        help="Address to listen on; 0.0.0.0 is every interface (add --allowed-hosts).")
@option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@option("--allowed-hosts", default="", show_default="localhost and private addresses", metavar="HOST[:PORT],...",
        help="Host names browsers may use to reach it (MLflow refuses others).")
@tracking_option
@click.pass_obj
@verbose_option
def ui(session: Session, host, port, allowed_hosts, tracking_uri) -> int:
    """The MLflow UI over this folder's mlruns/, with a link to each study's ranked runs table."""
    from unet_opt.tracking.ui import serve_ui

    return serve_ui(session.paths.tracking_uri(tracking_uri), session.paths.artifacts, host, port, click.echo,
                    allowed_hosts=allowed_hosts)


@cli.command()
@option("--space", default="default", show_default=True,
        help="TOML file (or default, drone, drone-cpu, binary); its fixed values are used, its [space] ignored.")
@data_option
@tracking_option
@placement_options
@sets_option
@click.pass_obj
@verbose_option
def train(session: Session, space, data, tracking_uri, device, gpus, procs, sets) -> int:
    """One run with fixed params (a baseline), logged to MLflow like a trial, tested on the test split."""
    flags = {"data.dataset": data, "search.tracking_uri": tracking_uri, "train.device": device}
    cfg = load_config(space, {k: v for k, v in flags.items() if v is not None}, sets)
    placement = placement_of(cfg.train.device, gpus, procs)
    from unet_opt.study.retrain import train_baseline

    r = train_baseline(cfg, session.paths, placement)
    click.echo(f"\nstopped: {r.fit.stop_reason} after {r.fit.epochs_run} epochs; best epoch {r.fit.best_epoch}")
    print_table(["metric", "value"], [[k, f"{v:.4f}"] for k, v in {**r.fit.best_metrics, **r.test}.items()
                                      if k.startswith(("val_", "test_")) and k != "val_loss"])
    click.echo(f"MLflow run: {r.run_id} (experiment '{r.experiment}')")
    if r.checkpoint:
        click.echo(f"checkpoint: {r.checkpoint}")
    return 0


@cli.command()
@option("--best", is_flag=True, required=True, help="Retrain the study's best trial (required).")
@option("--study", show_default="the only study in the storage", help="Study name.")
@storage_option
@tracking_option
@option("--epochs", type=click.IntRange(min=1, max=10_000), show_default="the trial's best epoch",
        help="Epochs to train.")
@option("--name", "model_name", show_default="unet-opt-<study>", help="Registered model name.")
@placement_options
@click.pass_obj
@verbose_option
def retrain(session: Session, best, study, storage, tracking_uri, epochs, model_name, device, gpus, procs) -> int:
    """Retrain the best trial on train+val, test it on the held-out split, register it as @champion."""
    if model_name is not None:
        check_name(model_name, "--name")
    placement = placement_of(device, gpus, procs)
    from unet_opt.study.retrain import retrain_best

    paths = session.paths
    r = retrain_best(paths, paths.storage_url(storage), paths.tracking_uri(tracking_uri), study, placement,
                     epochs, model_name)
    click.echo(f"\nretrained trial #{r.trial} (experiment '{r.experiment}') for {r.fit.epochs_run} epochs")
    print_table(["metric", "value"], [[k, f"{v:.4f}"] for k, v in r.test.items()])
    click.echo(f"MLflow run:       {r.run_id}")
    click.echo(f"registered model: models:/{r.model_name}@champion (version {r.version})")
    click.echo(f"checkpoint:       {r.checkpoint}  (torch.load(..., weights_only=True))")
    return 0


@cli.command()
@click.argument("model")
@option("--data", "dataset", show_default="the model's own data set", help="Data to evaluate on.")
@option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
        help="Images to score: a split stored with the model, or all of them.")
@option("--frame", type=click.Choice(["eval", "native"]), default="eval", show_default=True,
        help="Where to score: eval, the frame the model was judged at (its study's evaluation frame); native, "
             "each photo at its own size against its original mask (a data folder's figure to quote).")
@option("--out", type=click.Path(file_okay=False, path_type=Path), default="evaluation", show_default=True,
        help="Folder for the confusion matrix PNG and CSV and the per-class CSV.")
@overwrite_option
@tracking_option
@click.pass_obj
@verbose_option
def evaluate(session: Session, model, dataset, split, frame, out, overwrite, tracking_uri) -> int:
    """Scores of MODEL (models:/NAME@ALIAS, a run id or a checkpoint file) on one split."""
    from unet_opt.runs.inference import EVALUATION_FILES, check_outputs, evaluate_checkpoint, resolve_model

    check_outputs([out / name for name in EVALUATION_FILES], overwrite)
    ck = resolve_model(model, session.paths.tracking_uri(tracking_uri), session.paths.artifacts)
    ev = evaluate_checkpoint(ck, session.paths.cache, out, split, dataset, frame)
    click.echo(f"scored at {ev.frame}")
    print_table(["metric", "value"], [[k, f"{v:.4f}" if k != "images" else str(v)] for k, v in ev.metrics.items()])
    click.echo("")
    print_table(["class", "dice", "iou", "precision", "recall", "pixels"],
                [[str(r["class"]), *(f"{r[k]:.4f}" for k in ("dice", "iou", "precision", "recall")), str(r["pixels"])]
                 for r in ev.per_class])
    click.echo("\nwritten: " + ", ".join(str(p) for p in ev.written))
    return 0


@cli.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@option("--out", type=click.Path(file_okay=False, path_type=Path), default="predictions", show_default=True,
        help="Folder for the masks, colour masks and overlays.")
@overwrite_option
@tracking_option
@click.pass_obj
@verbose_option
def predict(session: Session, model, images, out, overwrite, tracking_uri) -> int:
    """Masks for IMAGES at their own resolution: class indices, class colours and an overlay."""
    from unet_opt.core.data.images import read_rgb
    from unet_opt.runs.inference import check_outputs, predict_image, prediction_files, resolve_model

    for image in images:  # every image and every output is checked before anything is written
        read_rgb(image)
    check_outputs([path for image in images for path in prediction_files(image, out)], overwrite)
    ck = resolve_model(model, session.paths.tracking_uri(tracking_uri), session.paths.artifacts)
    for image in images:
        written = predict_image(ck, image, out)
        click.echo(f"{image}: " + ", ".join(str(p) for p in written))
    return 0


cli.add_command(data)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turns every user mistake into one `error:` line and exit code 2."""
    runtime.handle_stop_signals()
    try:
        code = cli.main(args=argv, prog_name="unet-opt", standalone_mode=False)
    except click.exceptions.Exit as e:  # --help
        code = e.exit_code
    except click.exceptions.NoArgsIsHelpError as e:  # `unet-opt` alone: the help, not an error
        click.echo(e.ctx.get_help())
        code = 0
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "unet-opt"
        click.echo(f"error: {redact_url(e.format_message())} (see '{where} --help')", err=True)
        code = EXIT_USAGE
    except click.ClickException as e:
        click.echo(f"error: {redact_url(e.format_message())}", err=True)
        code = EXIT_USAGE
    except UserError as e:
        click.echo(f"error: {redact_url(' '.join(str(e).split()))}", err=True)
        code = EXIT_USAGE
    except (KeyboardInterrupt, click.exceptions.Abort) as e:  # click turns an interrupt into Abort
        code = stopped(isinstance(e, Terminated) or isinstance(e.__cause__, Terminated))
    except Exception:
        if runtime.stop_signal is None:
            raise
        # the signal landed inside an import or a library that turned it into another error
        logging.getLogger("unet_opt").debug("after the stop signal", exc_info=True)
        code = stopped(runtime.stop_signal == signal.SIGTERM)
    if not code and runtime.stop_signal is not None:  # a stop that no safe point raised again: still said
        code = stopped(runtime.stop_signal == signal.SIGTERM)
    sys.exit(code or 0)


def stopped(terminated: bool) -> int:
    click.echo("terminated" if terminated else "interrupted", err=True)
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
