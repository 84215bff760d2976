"""`unet-opt ui` in a browser: headless Chromium opens the study's runs table, which must list every trial.
Skipped where no Chromium is installed (.ci/run installs Debian's). The browser and server helpers are
benchmarks/ui_screenshot.py's, which takes the README's screenshots the same way."""

import importlib.util
import re
from pathlib import Path

import pytest


def load_screenshot_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "ui_screenshot.py"
    spec = importlib.util.spec_from_file_location("ui_screenshot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ui = load_screenshot_module()
GENAI_WORDS = ("Judges", "Prompts", "Evaluations")  # what MLflow's GenAI pages show, its model-training pages not


@pytest.mark.slow
@pytest.mark.skipif(ui.find_browser() is None, reason="chromium not installed")  # before the fixture's search
def test_runs_table_lists_the_trials(searched_home, tmp_path):
    experiment_id, runs = ui.study_runs(searched_home)
    assert any(name.startswith("trial-") for name in runs)
    with ui.ui_server(searched_home, ui.free_port()) as server, ui.Browser(ui.find_browser()) as page:
        page.open(ui.runs_table_url(server, experiment_id))
        page.wait_for(ui.trial_names(runs))  # every trial; fails naming those not shown
        page.screenshot(tmp_path / "runs.png", settle=0)
        # the link the study's note gives to its best trial opens MLflow's model-training run page
        note = runs["default"].data.tags["mlflow.note.content"]
        link = re.search(r"\[#\d+\]\((#/experiments/[^)]+)\)", note).group(1)
        assert link.endswith("workflowType=machine_learning")
        page.open(f"{server}/{link}")
        shown = page.wait_for(["trial-0000", "Model metrics", "Parameters"])  # a model-training run page
        assert not [word for word in GENAI_WORDS if word in shown], shown
    assert (tmp_path / "runs.png").read_bytes().startswith(b"\x89PNG")
