"""`unet-opt data check|prepare`: inspect a data folder, or decode it into the cache ahead of a search."""

from __future__ import annotations

from pathlib import Path

import click

from unet_opt.cli.console import print_table
from unet_opt.cli.options import Session, option, output_options, sets_option
from unet_opt.config.space_file import load_config
from unet_opt.errors import UserError


@click.group()
@output_options
def data() -> None:
    """Inspect a data folder, or decode it into the cache ahead of a search.

    \b
    Examples:
      unet-opt data check ~/semantic_drone_dataset
      unet-opt data prepare ~/semantic_drone_dataset --space drone-cpu --image-size 64 --image-size 96
    """


@data.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@option("--num-classes", type=click.IntRange(min=2), show_default="the class table's, else 24",
        help="Classes in the masks (data.num_classes): checked against the folder's class table, or the number "
             "of classes of a folder without one.")
@option("--ignore-index", type=click.IntRange(min=-1), default=0, show_default=True,
        help="Mask value left out of the rare classes (data.ignore_index; -1 for none).")
@output_options
def data_check(path: Path, num_classes: int | None, ignore_index: int) -> int:
    """Layout, pairs, image sizes, class pixel frequencies and every problem, with file names.

    \b
    Example:
      unet-opt data check ~/semantic_drone_dataset
    """
    from unet_opt.core.data.check import check

    report = check(path, num_classes, ignore_index=ignore_index)
    if not report.layout and len(report.problems) == 1:  # nothing to describe: the problem is the whole answer
        raise UserError(report.problems[0])
    if not report.layout:  # every problem, as the command promises (the search's one line shows the first few)
        for problem in report.problems:
            click.echo(f"problem: {problem}")
        raise UserError(f"{len(report.problems)} problem(s) in {path}; fix the files listed above")
    print_report(report, ignore_index)
    if report.problems:
        raise UserError(f"{len(report.problems)} problem(s) in {path}; fix the files listed above")
    click.echo("no problems found")
    return 0


@data.command("prepare")
@click.argument("path", type=click.Path(path_type=Path))
@option("--image-size", "sizes", type=click.IntRange(min=8), multiple=True, required=True,
        help="Height to decode for (repeatable: one cache per size).")
@option("--space", default="default", show_default=True, help="Space file whose [data] and [model] apply.")
@sets_option
@click.pass_obj
@output_options
def data_prepare(session: Session, path: Path, sizes, space, sets) -> int:
    """Decode PATH into the cache (studies/cache/) for each --image-size, with a progress bar.

    \b
    Example:
      unet-opt data prepare ~/semantic_drone_dataset --space drone-cpu --image-size 64 --image-size 96
    """
    from unet_opt import progress
    from unet_opt.core.data import load_data
    from unet_opt.core.data.layouts import find_source

    paths = session.paths
    # the evaluation frame a study of this space file scores at (its largest image size), decoded too
    eval_size = load_config(space, {"data.dataset": str(path)}, sets).with_eval_size().data.eval_size
    for size in sizes:
        cfg = load_config(space, {"data.dataset": str(path), "data.image_size": size, "data.eval_size": eval_size},
                          sets)
        pairs = len(find_source(path, cfg.data.num_classes).pairs)
        with progress.bar(pairs, f"decoding for height {size}", "image") as decoded:
            data_set = load_data(cfg.data, cfg.model.depth, paths.cache, decoded.update)
        h, w = data_set.images.shape[-2:]
        scored = "" if data_set.eval_masks is None else \
            f" (masks also at {data_set.scored_frame[0]}x{data_set.scored_frame[1]}, the evaluation frame)"
        click.echo(f"{len(data_set.names)} images cached at {h}x{w}{scored} under {paths.cache}")
    return 0


def print_report(report, ignore_index: int = 0) -> None:
    """`report`: a `core.data.check.Report` (imported by the command: it needs NumPy and Pillow)."""
    from unet_opt.core.data.check import rare_classes_advice

    click.echo(f"layout: {report.layout} at {report.root}  ({report.pairs} image/mask pairs, "
               f"{'colour' if report.colour_masks else 'class-index'} masks)")
    click.echo("image sizes: " + ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common()))
    if report.classes is not None and report.frequencies is not None:
        rows = enumerate(zip(report.classes.names, report.frequencies))
        print_table(["#", "class", "pixels"],
                    [[str(i), name + (" (ignored)" if i == ignore_index else ""),
                      f"{100 * f:.3g}%" if f else "none: in no mask"] for i, (name, f) in rows])
        absent = [name for i, (name, f) in enumerate(zip(report.classes.names, report.frequencies))
                  if not f and i != ignore_index]
        if absent:
            click.echo(f"in no mask: {', '.join(absent)} (nothing to learn them from; if the photos show them, check "
                       f"the masks and the class table)")
    advice = rare_classes_advice(report, ignore_index)
    if advice:
        click.echo(advice)
    for warning in report.warnings:
        click.echo(f"warning: {warning}")
    for problem in report.problems:
        click.echo(f"problem: {problem}")
