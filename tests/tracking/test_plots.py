"""The artifact images read at a glance: titles, class names, legends, whole epochs, exact mask colours."""

import warnings

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from unet_opt.config.schema import ModelConfig
from unet_opt.core.data import IGNORE, SegmentationData
from unet_opt.core.data.classes import ClassTable
from unet_opt.core.model import build_model
from unet_opt.core.train import FitResult
from unet_opt.runs.reports import split_report, trial_report
from unet_opt.tracking import plots
from unet_opt.tracking.report_files import write_report

DRONE = ClassTable.drone()


NAMES, COLORS = list(DRONE.names), list(DRONE.colors)


def drone_matrix(absent: tuple[int, ...] = (1, 9)) -> np.ndarray:
    """24 x 24 pixel counts, mostly on the diagonal; the classes in `absent` have no true pixels."""
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 50, (24, 24)) + np.diag(rng.integers(1000, 5000, 24))
    matrix[list(absent)] = 0
    return matrix


PHOTO = (10, 200, 30)  # a flat image colour that no class, text or legend in the figure has


def overlay_inputs():
    images = np.full((2, 16, 24, 3), PHOTO, np.uint8)
    truths = np.zeros((2, 16, 24), np.uint8)
    truths[:, :, 12:] = NAMES.index("roof")
    truths[1, 0, 0] = IGNORE
    preds = truths.copy()
    preds[1, 0, 0] = NAMES.index("unlabeled")
    preds[:, 8:, 12:] = NAMES.index("bicycle")
    return images, truths, preds


def test_rows_are_normalised_per_true_class_and_absent_classes_stay_zero():
    matrix = drone_matrix()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 RuntimeWarning for the empty rows
        normalised = plots.normalise_rows(matrix)
    present = matrix.sum(axis=1) > 0
    assert np.allclose(normalised[present].sum(axis=1), 1)
    assert not np.isnan(normalised).any() and (normalised[~present] == 0).all()
    assert normalised[2, 2] == pytest.approx(matrix[2, 2] / matrix[2].sum())


def test_matrix_title_names_the_split_and_the_epoch_when_known():
    assert plots.matrix_title("val", 7) == "val split, epoch 7"
    assert plots.matrix_title("test") == "test split"
    assert plots.matrix_title("all") == "all images"
    assert plots.matrix_title("val", 7, "trial #4") == "trial #4, val split, epoch 7"
    assert plots.matrix_title("test", run="models:/m@champion", frame="64x96") == "models:/m@champion, test split, at 64x96"


def test_confusion_matrix_png_is_legible_for_24_classes(tmp_path):
    matrix = drone_matrix()
    fig = plots.confusion_matrix_figure(matrix, NAMES, plots.matrix_title("val", 7))
    ax = fig.axes[0]
    assert "val split, epoch 7" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES  # every class, absent ones too
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert np.allclose(ax.images[0].get_array(), plots.normalise_rows(matrix))
    assert ax.images[0].get_clim() == (0, 1)  # colours mean the same fraction in every run
    rows, columns, values = plots.cell_values(plots.normalise_rows(matrix))
    assert "0.00" not in values and len(values) < 24 * 24  # negligible cells are blank, not noise
    assert values[list(zip(rows, columns)).index((2, 2))] == f"{plots.normalise_rows(matrix)[2, 2]:.2f}"
    drawn = [c for c in ax.collections if len(c.get_paths()) == len(values)]
    assert len(drawn) == 1 and np.allclose(drawn[0].get_offsets(), np.column_stack([columns, rows]))
    assert fig.get_size_inches()[0] * fig.dpi >= 900

    plots.confusion_matrix(matrix, NAMES, tmp_path / "cm.png", "val split, epoch 7")
    width, height = Image.open(tmp_path / "cm.png").size
    assert width >= 900 and height >= 900


def test_the_matrix_values_are_drawn_in_their_cells_white_on_dark_and_dark_on_light(tmp_path):
    matrix = np.diag(np.full(24, 100)) + np.eye(24, k=1, dtype=int) * 25  # rows 0.80 / 0.20 (the last 1.00)
    fig = plots.confusion_matrix_figure(matrix, NAMES)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    ax = fig.axes[0]

    def cell(i: int, j: int) -> np.ndarray:
        x, y = ax.transData.transform((j, i))
        row = pixels.shape[0] - int(round(y))  # display y runs upwards
        return pixels[row - 8:row + 8, int(x) - 15:int(x) + 15].sum(axis=2)

    dark, light, empty = cell(3, 3), cell(3, 4), cell(3, 7)
    assert (dark > 700).any() and (dark < 300).mean() > 0.5  # white text on a dark cell
    assert (light < 200).any() and (light > 500).mean() > 0.5  # black text on a light cell
    assert empty.min() > 700  # a zero cell stays blank


@pytest.mark.parametrize("epochs", [1, 3, 40])  # one epoch: most pruned trials
def test_learning_curves_have_whole_epoch_ticks_and_name_the_metric(epochs):
    history = [{"train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_dice": 0.2 * e / epochs, "val_miou": 0.1 * e / epochs}
               for e in range(1, epochs + 1)]
    fig = plots.learning_curves_figure(history, "val_miou", best_epoch=epochs)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert all("." not in label.get_text() for label in ax.get_xticklabels() if label.get_text())
        assert ax.get_xlim()[0] < 1 and ax.get_xlim()[1] > epochs  # every point inside the axes
    scores = fig.axes[1]
    assert "val_miou" in scores.get_ylabel()
    assert "val_miou (search goal)" in [t.get_text() for t in scores.get_legend().get_texts()]


@pytest.mark.parametrize("validated", [True, False])
def test_learning_curves_are_titled_with_their_run_above_their_panels(validated):
    # a review: a downloaded learning_curves.png did not say whose it was, while the other figures did
    history = [{"train_loss": 1.0 / e, **({"val_loss": 1.2 / e, "val_dice": 0.1 * e} if validated else {})}
               for e in range(1, 6)]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots.learning_curves_figure(history, best_epoch=5, run="trial #4")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    assert fig.get_suptitle() == "Learning curves, trial #4"
    assert title.y1 <= fig.bbox.height and title.x0 >= 0 and title.x1 <= fig.bbox.width
    assert all(ax.title.get_window_extent(renderer).y1 < title.y0 for ax in fig.axes)
    assert plots.learning_curves_figure(history).get_suptitle() == ""  # no run: no title, as before


def test_the_two_losses_say_what_each_measures():
    # a review: val_loss below train_loss at every epoch read as "validation is easier than training"
    history = [{"train_loss": 0.7, "val_loss": 0.4, "val_dice": 0.5}]
    legend = [t.get_text() for t in plots.learning_curves_figure(history).axes[0].get_legend().get_texts()]
    assert legend == ["train_loss (the training objective)", "val_loss (cross-entropy, unweighted)"]


def test_a_run_without_validation_gets_its_loss_alone_and_no_best_epoch():
    # a retrain on train+val drew an empty "no validation" panel and a "best epoch (15)" line
    fig = plots.learning_curves_figure([{"train_loss": 1.0 / e} for e in range(1, 6)], best_epoch=5)
    (loss,) = fig.axes
    assert loss.get_title() == "loss (trained on train+val: no validation)"
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train_loss (the training objective)"]


def test_a_huge_first_loss_puts_the_loss_panel_on_a_log_axis_and_a_usual_one_does_not():
    exploding = [{"train_loss": 1900.0, "val_loss": 1850.0}] + [{"train_loss": 1.0, "val_loss": 0.9}] * 5
    loss = plots.learning_curves_figure(exploding).axes[0]
    assert loss.get_yscale() == "log" and "log" in loss.get_ylabel()
    low, high = loss.get_ylim()
    assert low < 0.9 and high > 1900  # both ends visible, the late epochs not squashed onto 0
    usual = [{"train_loss": 2.0 - 0.1 * e, "val_loss": 2.1 - 0.1 * e} for e in range(10)]
    assert plots.learning_curves_figure(usual).axes[0].get_yscale() == "linear"


def test_prediction_overlays_have_column_titles_and_a_legend_of_the_classes_shown():
    fig = plots.prediction_overlays_figure(*overlay_inputs(), COLORS, NAMES)
    texts = [t.get_text() for t in fig.texts]
    assert {"image", "truth", "prediction"} <= set(texts)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["unlabeled", "roof", "bicycle", "not scored (image shows)"]


def test_prediction_overlays_carry_their_title_above_the_column_titles():
    fig = plots.prediction_overlays_figure(*overlay_inputs(), COLORS, NAMES, title="trial #4, val split, epoch 5")
    y = {t.get_text(): t.get_position()[1] for t in fig.texts}
    assert y["trial #4, val split, epoch 5"] > y["image"] == y["truth"] == y["prediction"]


def test_prediction_overlay_masks_keep_the_class_colours_exactly(tmp_path):
    images, truths, preds = overlay_inputs()
    plots.prediction_overlays(images, truths, preds, COLORS, NAMES, tmp_path / "p.png", min_height=16)
    png = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    ys, xs = np.nonzero(np.all(png == PHOTO, axis=2))  # the image panels: where the grid lies
    top, left, gap = ys.min(), xs.min(), 3
    truth_x, pred_x = left + 24 + gap, left + 2 * (24 + gap)
    assert tuple(png[top + 4, truth_x + 2]) == COLORS[NAMES.index("unlabeled")]
    assert tuple(png[top + 4, truth_x + 20]) == COLORS[NAMES.index("roof")]
    assert tuple(png[top + 12, pred_x + 20]) == COLORS[NAMES.index("bicycle")]
    assert tuple(png[top + 16 + gap, truth_x]) == PHOTO  # an unscored truth pixel shows the image


def test_trial_artifacts_title_the_matrix_with_the_best_epoch(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(plots, "confusion_matrix", lambda matrix, names, path, title="": titles.append(title))
    data = SegmentationData(torch.zeros((2, 3, 16, 16), dtype=torch.uint8), torch.zeros((2, 16, 16), dtype=torch.uint8),
                            ["a", "b"], DRONE, False)
    result = FitResult(history=[{"train_loss": 1.0, "val_dice": 0.5}] * 4, best_epoch=3, confusion=drone_matrix(),
                       model=build_model(ModelConfig(base_channels=4, depth=2), len(DRONE)))
    report = trial_report(result, data, [0, 1], "", "val_dice")  # as Runner.record builds it
    report.splits.append(split_report(drone_matrix(), data, result.model, [0], "test_", 3))
    write_report(tmp_path, report)
    assert titles == ["val split, epoch 3", "test split, epoch 3"]
    assert (tmp_path / "predictions.png").is_file() and (tmp_path / "learning_curves.png").is_file()
