"""`unet-opt figures`: a pruned trial's figures, drawn into its run when they are wanted."""

import re

import fits
import pytest
from conftest import run_search
from mlflow.tracking import MlflowClient

PRUNED = {"config.toml", "confusion_matrix.csv", "per_class.csv", "figures.npz"}
FIGURES = {"learning_curves.png", "confusion_matrix.png", "predictions.png"}


@pytest.mark.slow
def test_a_pruned_trial_s_figures_are_drawn_into_its_run_on_demand(home, cli, capsys):
    run_search(home, 2, "space.epochs.low=3", fit=fits.stop_after_first_epoch)
    pruned_lines = [line for line in capsys.readouterr().err.splitlines() if " PRUNED" in line]
    assert len(pruned_lines) == 2  # each with the value it reached: what the pruner judged it by
    assert all(re.search(r"trial #\d PRUNED val_dice 0\.\d{4} \(best epoch 1\)", line) for line in pruned_lines)
    client = MlflowClient(f"sqlite:///{home}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("unet-opt-default").experiment_id],
                              "tags.`optuna.state` = 'PRUNED'")
    assert len(runs) == 2
    for run in runs:  # the search left the tables, and what the figures are drawn from
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == PRUNED
    code, out, err = cli("figures", "--trial", "1")
    assert code == 0 and "figures drawn into the runs of 1 trial(s): #1" in out, err
    files = {r.data.tags["optuna.trial"]: {a.path for a in client.list_artifacts(r.info.run_id)} for r in runs}
    assert files == {"0": PRUNED, "1": PRUNED | FIGURES}
    code, out, _ = cli("figures")  # every trial still without them
    assert code == 0 and "1 trial(s): #0" in out
    code, out, _ = cli("figures")
    assert code == 0 and "every trial's figures are drawn already" in out
    code, out, _ = cli("figures", "--trial", "0")
    assert code == 0 and "trial #0: drawn already" in out
    code, _, err = cli("figures", "--trial", "7")
    assert code == 2 and err.startswith("error: study 'default' has no trial #7")
