"""`unet-opt ui` in a browser: headless Chromium opens the study's runs table, which must list every trial.
Skipped where no Chromium is installed (.ci/run installs Debian's). The browser and server helpers are
benchmarks/ui_screenshot.py's, which takes the README's screenshots the same way."""

import importlib.util
from pathlib import Path

import pytest


def load_screenshot_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "ui_screenshot.py"
    spec = importlib.util.spec_from_file_location("ui_screenshot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ui = load_screenshot_module()


@pytest.mark.slow
@pytest.mark.skipif(ui.find_browser() is None, reason="chromium not installed")  # before the fixture's search
def test_runs_table_lists_the_trials(searched_home, tmp_path):
    experiment_id, runs = ui.study_runs(searched_home)
    assert any(name.startswith("trial-") for name in runs)
    with ui.ui_server(searched_home, ui.free_port()) as server, ui.Browser(ui.find_browser()) as page:
        page.open(ui.runs_table_url(server, experiment_id))
        page.wait_for(sorted(runs))  # the trials and the study's parent run; fails naming those not shown
        page.screenshot(tmp_path / "runs.png", settle=0)
    assert (tmp_path / "runs.png").read_bytes().startswith(b"\x89PNG")
