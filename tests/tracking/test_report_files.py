"""A run's report files: drawn at once, or only its tables with the report saved to draw from later."""

import numpy as np

from unet_opt.core.data import ClassTable
from unet_opt.tracking.report_files import SHOWN_ROWS, RunReport, SplitReport, load_report, save_report, write_report


def report(height: int, figures: bool = True) -> RunReport:
    classes, rng = ClassTable.drone(), np.random.default_rng(0)
    masks = rng.integers(0, len(classes), (2, height, height * 3 // 2), dtype=np.uint8)
    split = SplitReport(rng.integers(0, 500, (len(classes),) * 2), list(classes.names), list(classes.colors),
                        rng.integers(0, 255, (2, height, height * 3 // 2, 3), dtype=np.uint8), masks, masks[::-1].copy(),
                        epoch=2)
    history = [{"train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_dice": 0.2 * e, "lr": 1e-3} for e in (1, 2)]
    return RunReport("[train]\n", "val_dice", history, 2, [split], figures)


def test_without_figures_only_the_tables_and_what_the_figures_are_drawn_from_are_written(tmp_path):
    written = {p.name for p in write_report(tmp_path, report(32, figures=False))}
    assert written == {"config.toml", "confusion_matrix.csv", "per_class.csv", "figures.npz"}
    assert {p.name for p in tmp_path.iterdir()} == written


def test_a_saved_report_draws_the_same_figures_later(tmp_path):
    original = report(32)
    save_report(original, tmp_path / "figures.npz")
    loaded = load_report(tmp_path / "figures.npz")
    assert loaded.figures and loaded.history == original.history and loaded.best_epoch == 2
    for a, b in zip(loaded.splits, original.splits):
        assert (a.matrix == b.matrix).all() and (a.preds == b.preds).all() and (a.images == b.images).all()
        assert a.names == b.names and a.colors == b.colors and a.epoch == b.epoch
    later = tmp_path / "later"
    later.mkdir()
    drawn = {p.name for p in write_report(later, loaded)}
    assert {"learning_curves.png", "confusion_matrix.png", "predictions.png"} <= drawn


def test_large_prediction_images_are_kept_for_later_at_most_shown_rows_tall(tmp_path):
    save_report(report(640), tmp_path / "figures.npz")
    split = load_report(tmp_path / "figures.npz").splits[0]
    assert split.images.shape[1] <= SHOWN_ROWS and split.truths.shape == split.preds.shape == split.images.shape[:3]


def test_a_run_s_figures_say_whose_they_are_saved_or_drawn_at_once(tmp_path, monkeypatch):
    # a review: predictions.png had no title and the matrix's said "val split, epoch 2": once downloaded, the
    # files of two trials could not be told apart
    from unet_opt.tracking import plots

    titles = []
    monkeypatch.setattr(plots, "confusion_matrix", lambda *args: titles.append(args[3]))
    monkeypatch.setattr(plots, "prediction_overlays", lambda *args, title="": titles.append(title))
    named = report(32, figures=False)
    named.name = "trial #4"
    save_report(named, tmp_path / "figures.npz")
    loaded = load_report(tmp_path / "figures.npz")
    assert loaded.name == "trial #4"
    loaded.figures = True
    write_report(tmp_path, loaded)
    assert titles == ["trial #4, val split, epoch 2"] * 2
