"""What the terminal shows: aligned tables and the summary at the end of a search."""

from __future__ import annotations

import click


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def metric_rows(metrics: dict[str, float]) -> list[list[str]]:
    """[name, value] rows of a run's scores; a macro F1 equal to the Dice beside it says why, or it reads as a
    bug (per class, Dice and F1 are one measure; a binary task's Dice is its foreground's alone and differs)."""
    rows = []
    for name, value in metrics.items():
        shown = str(value) if isinstance(value, int) else f"{value:.4f}"
        if name.endswith("f1_macro") and metrics.get(name.removesuffix("f1_macro") + "dice") == value:
            shown += "  (= dice: per class, Dice and F1 are one measure)"
        rows.append([name, shown])
    return rows


def print_summary(s, seconds: float) -> None:
    """`s`: the `study.summary.Summary` of a search that ran for `seconds`."""
    finished = s.counts.get("complete", 0) + s.counts.get("pruned", 0)
    # more than asked for: another search of the study, started at once with a larger --trials, ran them
    count = f"{finished}/{s.target} finished trials" if finished <= s.target \
        else f"{finished} finished trials (this command asked for {s.target})"
    if not s.already_done:  # a line between the bars and log lines above and the summary; none ran when done
        click.echo("")
    if s.already_done:
        click.echo(f"study '{s.study}' already has {finished} finished trials (asked for {s.target}); nothing to do. "
                   f"Ask for more with --trials N.")
    elif s.interrupted:
        how = "terminated" if s.terminated else "interrupted"
        click.echo(f"{how}: study '{s.study}' has {count}; "
                   + ("run the same command again to continue." if finished < s.target
                      else "every trial it asked for had finished."))
    else:
        click.echo(f"study '{s.study}': {count}, {s.ran} run now in {seconds:.0f} s"
                   + (f" ({s.stopped_reason})" if s.stopped_reason else ""))
    click.echo("trials by state: " + ", ".join(f"{k} {v}" for k, v in s.counts.items() if v))
    if s.best:
        click.echo(f"best trial: #{s.best['number']}  {s.metric} = {s.best['value']:.4f}  "
                   f"(best epoch {s.best['best_epoch']}, MLflow run {s.best['mlflow_run_id']})")
        width = max(len(k) for k in s.best["params"]) if s.best["params"] else 0
        for key, value in s.best["params"].items():
            click.echo(f"  {key:<{width}}  {value:.4g}" if isinstance(value, float) else f"  {key:<{width}}  {value}")
    else:
        click.echo("no complete trial yet")
    click.echo(f"MLflow UI: {s.ui}")
