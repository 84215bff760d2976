"""The commands of a study: `search`, `report`, `studies`, `ui`."""

from __future__ import annotations

import contextlib
import json
import time
from contextlib import AbstractContextManager

import click

from unet_opt.cli.console import fmt, print_summary, print_table
from unet_opt.cli.options import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    ConfigFile,
    Seconds,
    Session,
    data_option,
    option,
    output_options,
    overwrite_option,
    placement_of,
    placement_options,
    sets_option,
    space_option,
    storage_option,
    tracking_option,
)
from unet_opt.config.schema import Config
from unet_opt.config.space_file import check_data_folder_named, load_config


@click.command()
@option("--trials", type=click.IntRange(min=1), show_default="the space file's, else 30",
        help="Finished trials the study should have.")
@option("--timeout", type=Seconds(), metavar="S", show_default="the space file's, else none",
        help="Start no new trial after S seconds (0: no limit).")
@space_option
@data_option
@option("--study", show_default="the space file's search.study, else the file's name",
        help="Study name; its MLflow experiment is unet-opt-<study>.")
@storage_option
@tracking_option
@option("--sampler", type=click.Choice(["tpe", "random"]), show_default="the space file's, else tpe",
        help="Optuna sampler.")
@option("--pruner", type=click.Choice(["contenders", "hyperband", "median", "halving", "none"]),
        show_default="the space file's, else contenders",
        help="Which trials stop early: contenders (after epochs 3, 6 and 12 the top third of the trials scheduled "
        "to run on goes on, after epoch 1 the top two thirds), Optuna's hyperband, median, halving, or none.")
@option("--seed", type=int, show_default="the space file's, else 0", help="Sampler seed.")
@placement_options
@option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
        help="Trials at once on this machine, each on its own share of the GPUs (or CPU cores).")
@sets_option
@click.pass_obj
@output_options
def search(session: Session, trials, timeout, space, data, study, storage, tracking_uri, sampler, pruner, seed,
           device, gpus, procs, workers, sets) -> int:
    """Run (or continue) a study until it has --trials finished trials.

    \b
    Examples:
      unet-opt search --trials 30
      unet-opt search --trials 40                  # the same study, 10 more trials
      unet-opt search --space drone --data ~/semantic_drone_dataset --timeout 3600
      unet-opt search --workers 2 --set train.patience=3
    """
    flags = {"search.trials": trials, "search.timeout": timeout, "data.dataset": data, "search.study": study,
             "search.storage": storage, "search.tracking_uri": tracking_uri, "search.sampler": sampler,
             "search.pruner": pruner, "search.seed": seed, "train.device": device}
    cfg = load_config(space, {k: v for k, v in flags.items() if v is not None}, sets)
    if data is None:
        check_data_folder_named(cfg)
    placement = placement_of(cfg.train.device, gpus, procs)
    with search_writer(session, cfg, placement.device, workers) as writer:
        from unet_opt.study.search import run_search  # heavy imports only once the input is known to be good

        started = time.monotonic()
        summary = run_search(cfg, session.paths, placement, workers, session.verbose, writer=writer)
    print_summary(summary, time.monotonic() - started)
    if summary.interrupted:
        return EXIT_TERMINATED if summary.terminated else EXIT_INTERRUPTED
    return 1 if summary.failed_out else 0


def search_writer(session: Session, cfg: Config, device: str, workers: int) -> AbstractContextManager:
    """The search's writer process, forked as soon as torch is imported: it imports its drawing libraries
    on another core while this process imports MLflow and Optuna (with --workers, each worker starts its
    own). Ended on the way out, however the search ends (`run_search`'s runner ends it first)."""
    if workers > 1:
        return contextlib.nullcontext()
    from unet_opt.tracking.writer import ArtifactWriter

    return ArtifactWriter.started(session.paths.tracking_uri(cfg.search.tracking_uri), device)


@click.command()
@option("--study", show_default="the only study in the storage", help="Study name.")
@storage_option
@option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@option("--best-config", type=ConfigFile(), metavar="FILE", show_default="none",
        help="Also write the best trial's config as TOML, which `unet-opt train --space FILE` trains again "
             "(- prints it alone on stdout).")
@overwrite_option
@click.pass_obj
@output_options
def report(session: Session, study, storage, as_json, best_config, overwrite) -> int:
    """The best trial and a table of every trial of a study.

    \b
    Examples:
      unet-opt report
      unet-opt report --study drone --json > drone.json
      unet-opt report --best-config best.toml && unet-opt train --space best.toml
    """
    from unet_opt.study.summary import LAST_RETRAIN, retrain_words, study_report

    if overwrite and best_config is None:
        raise click.UsageError("--overwrite replaces the file of --best-config; add --best-config FILE or drop "
                               "--overwrite")
    if best_config is not None:
        from unet_opt.study.best_config import best_config_text, write_best_config

        if best_config == "-":  # the TOML itself on stdout, as the only output
            if as_json:
                raise click.UsageError("--best-config - and --json both write to stdout; pass one of them")
            click.echo(best_config_text(session.paths.storage_url(storage), study, "FILE", session.paths.home)[0],
                       nl=False)
            return 0
        from pathlib import Path

        best = write_best_config(session.paths.storage_url(storage), study, Path(best_config), session.paths.home,
                                 overwrite)
        click.echo(f"wrote {best_config}: trial #{best['number']} of study '{best['study']}' "
                   f"({best['metric']} = {best['value']:.4f}); train it again with "
                   f"`unet-opt train --space {best_config}`", err=as_json)  # stdout stays one JSON object

    rep = study_report(session.paths.storage_url(storage), study)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return 0
    metric = rep["metric"] or "value"
    best = rep["best"]
    count = len(rep["trials"])
    click.echo(f"study '{rep['study']}' ({rep['direction']} {metric}), {count} trial{'s' if count != 1 else ''}")
    if best:
        params = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        click.echo(f"best: #{best['number']}  {metric} = {best['value']:.4f}  {params}")
    if retrained := rep[LAST_RETRAIN]:
        again = "" if not best or best["number"] == retrained["trial"] else \
            f"; the best trial is #{best['number']} now: `unet-opt retrain --best --study {rep['study']}`"
        click.echo(f"last retrain: {retrain_words(retrained).replace('`', '')}{again}")
    names = list(dict.fromkeys(k for t in rep["trials"] for k in t["params"]))  # the space's order, as the search shows
    # "best_epoch": where its value was reached (what `retrain --best` trains for), "ran": epochs run, beside the
    # train.epochs drawn
    header = ["#", "state", metric, "best_epoch", "ran", *names, "reason"]
    rows = [[str(t["number"]), t["state"], "" if t["value"] is None else f"{t['value']:.4f}",
             "" if t["value"] is None or t["best_epoch"] is None else str(t["best_epoch"]),
             "" if t["epochs_run"] is None else str(t["epochs_run"]),
             *[fmt(t["params"].get(n, "")) for n in names], t["reason"] or ""] for t in rep["trials"]]
    print_table(header, rows)
    return 0


@click.command()
@storage_option
@option("--json", "as_json", is_flag=True, help="Print one JSON list instead of a table.")
@click.pass_obj
@output_options
def studies(session: Session, storage, as_json) -> int:
    """Every study in the storage, with trial counts by state and the best value.

    \b
    Examples:
      unet-opt studies
      unet-opt studies --json
      unet-opt studies --storage postgresql://user@db-host/unet_opt
    """
    from unet_opt.study.summary import list_studies

    rows = list_studies(session.paths.storage_url(storage))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    if not rows:
        click.echo("no studies yet; run `unet-opt search`")
        return 0
    states = ["complete", "pruned", "fail", "interrupted", "running"]
    print_table(["study", "trials", *states, "best", "started"],
                [[r["study"], str(r["trials"]), *(str(r[s]) for s in states),
                  "" if r["best"] is None else f"{r['best']:.4f}", r["started"]] for r in rows])
    return 0


@click.command()
@option("--study", show_default="the only study in the storage", help="Study name.")
@option("--trial", "numbers", type=click.IntRange(min=0), multiple=True, show_default="every trial without them",
        help="Trial number (repeatable).")
@storage_option
@tracking_option
@click.pass_obj
@output_options
def figures(session: Session, study, numbers, storage, tracking_uri) -> int:
    """Draw the figures of pruned (or failed) trials into their MLflow runs: their curves, confusion matrix
    and predictions, which a search draws only for complete trials.

    \b
    Examples:
      unet-opt figures                 # every trial still without them
      unet-opt figures --trial 7 --trial 12
    """
    from unet_opt.study.figures import draw_figures

    paths = session.paths
    done = draw_figures(paths.storage_url(storage), paths.tracking_uri(tracking_uri), paths.artifacts, study, numbers)
    if done.recovered:
        click.echo(f"wrote the files of {done.recovered} run(s) that a killed search had left unwritten")
    for number in sorted(set(numbers)) or done.without_files:  # without --trial: those no command can draw
        if number in done.skipped:
            click.echo(f"trial #{number}: {done.skipped[number]}")
    if done.drawn:
        shown = ", ".join(f"#{n}" for n in done.drawn)
        click.echo(f"study '{done.study}': figures drawn into the runs of {len(done.drawn)} trial(s): {shown}")
    if done.not_yet and not numbers:
        click.echo(f"study '{done.study}': {len(done.not_yet)} trial(s) still running or having their files written "
                   f"by a search; run `unet-opt figures` again once it ends")
    elif not done.drawn and not numbers:
        click.echo(f"study '{done.study}': every other trial's figures are drawn already" if done.without_files
                   else f"study '{done.study}': every trial's figures are drawn already")
    return 0


@click.command()
@option("--host", default="127.0.0.1", show_default=True,
        help="Address to listen on; 0.0.0.0 is every interface (add --allowed-hosts).")
@option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535), help="Port of the MLflow UI.")
@option("--live-port", default=8080, show_default=True, type=click.IntRange(1, 65535),  # dashboard.DEFAULT_PORT
        help="Port of the live view of the studies (optuna-dashboard).")
@option("--no-live", is_flag=True, help="Serve the MLflow UI alone, without the live view.")
@option("--allowed-hosts", default="", show_default="localhost and private addresses", metavar="HOST[:PORT],...",
        help="Host names browsers may use to reach the MLflow UI (MLflow refuses others).")
@storage_option
@tracking_option
@click.pass_obj
@output_options
def ui(session: Session, host, port, live_port, no_live, allowed_hosts, storage, tracking_uri) -> int:
    """The MLflow UI over this folder's mlruns/ and, beside it, a live view of each study (optuna-dashboard:
    history, parameter importances, parallel coordinates, each trial's curve), with their links.

    \b
    Examples:
      unet-opt ui
      unet-opt ui --host 0.0.0.0 --allowed-hosts gpu-box.lab:5000
    """
    from unet_opt.parallel.servers import check_port, local_base, serve
    from unet_opt.tracking.ui import mlflow_ui

    if port == live_port and not no_live:  # the second server would fail on it only after a while
        raise click.UsageError(f"--port and --live-port are both {port}; pass another --live-port (or --no-live)")
    paths = session.paths
    mlflow_server, pages = mlflow_ui(paths.tracking_uri(tracking_uri), paths.artifacts, host, port, allowed_hosts)
    servers, live = [mlflow_server], {}
    storage_url = paths.storage_url(storage)
    studies = storage or paths.studies.joinpath("unet-opt.db").is_file()
    if not no_live and studies:
        from unet_opt.study.dashboard import live_view

        check_port(host, live_port, "--live-port")
        live_server, live = live_view(storage_url, host, live_port)
        servers.append(live_server)
    if studies:  # the notes of each study link where it is served now
        from unet_opt.study.dashboard import point_links_at

        point_links_at(storage_url, paths.tracking_uri(tracking_uri), local_base(host, port),
                       local_base(host, live_port) if live else None)
    where = f"MLflow UI on {local_base(host, port)}"
    if live:
        where += f", live view on {local_base(host, live_port)}"
    click.echo(f"{where}  (Ctrl-C stops {'them' if live else 'it'})")
    for study, url in pages:
        click.echo(f"  study '{study}', trials ranked: {url}")
        if study in live:
            click.echo(f"  {' ' * len(study)}         live view:     {live[study]}")
    return serve(servers)
