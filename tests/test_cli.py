import subprocess
import sys

import pytest

from unet_opt.config import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.data import load_data, make_split, split_indices
from unet_opt.train import fit


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "unet_opt", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "search" in proc.stdout and "retrain" in proc.stdout


def test_report_and_studies_import_no_torch():
    # `report` and `studies` only read the study storage: they must start fast
    code = "import sys, unet_opt.cli, unet_opt.study.summary; print('torch' in sys.modules, 'mlflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stdout + proc.stderr


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == "unet-opt, version 0.1.0"


def test_the_command_alone_prints_its_help_not_an_error(cli):
    code, out, err = cli()
    assert code == 0 and "search" in out and "retrain" in out and "error" not in err


@pytest.mark.slow
def test_compiled_model_trains(tmp_path):
    data = load_data(DataConfig(image_size=32, synthetic_images=16), depth=2)
    split = split_indices(make_split(data.names, 0.2, 0.2, 0), data.names)
    cfg = Config(model=ModelConfig(base_channels=4, depth=2), train=TrainConfig(batch_size=4, epochs=1, compile=True))
    result = fit(cfg, data, split)
    # torch.compile gives the same kind of result as eager mode
    assert result.epochs_run == 1 and 0 <= result.best_metrics["val_dice"] <= 1
