"""`unet-opt ui`: where it listens, what it prints, how it stops."""

import signal
import socket
import subprocess
import sys
import urllib.request
from types import SimpleNamespace

import pytest
from conftest import free_port, wait_until
from mlflow.tracking import MlflowClient


def test_ui_binds_localhost_unless_told(home, cli):
    from unet_opt.cli.app import ui
    from unet_opt.tracking.ui import serve_ui

    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    assert next(p for p in ui.params if p.name == "host").default == "127.0.0.1"
    commands = []

    class Server:
        def wait(self):
            return 0

    def start(command, env, start_new_session):
        commands.append(command)
        return Server()

    port = free_port("0.0.0.0")
    assert serve_ui(f"sqlite:///{home}/mlruns/mlflow.db", home / "mlruns" / "artifacts", "0.0.0.0", port, start=start) == 0
    assert commands[0][commands[0].index("--host") + 1] == "0.0.0.0" and str(port) in commands[0]


@pytest.mark.slow
def test_ui_prints_each_study_s_runs_table_ranked_once_its_checks_pass(searched_home):

    from unet_opt.tracking.ui import serve_ui

    uri = f"sqlite:///{searched_home}/mlruns/mlflow.db"
    experiment = MlflowClient(uri).get_experiment_by_name("unet-opt-default")
    port = free_port()
    lines = []
    started = serve_ui(uri, searched_home / "mlruns" / "artifacts", "127.0.0.1", port, lines.append,
                       start=lambda *args, **kwargs: SimpleNamespace(wait=lambda: 0))
    assert started == 0 and lines[0] == f"MLflow UI on http://127.0.0.1:{port}  (Ctrl-C stops it)"
    assert lines[1:] == [f"  study 'default', trials ranked: http://127.0.0.1:{port}/#/experiments/"
                         f"{experiment.experiment_id}/runs?viewStateShareKey=unet-opt-ranked&workflowType=machine_learning"]
    # a study of an earlier version: no saved view, and an experiment named after the study alone
    client = MlflowClient(uri)
    client.delete_experiment_tag(experiment.experiment_id, "mlflow.sharedViewState.unet-opt-ranked")
    client.rename_experiment(experiment.experiment_id, "default")
    lines.clear()
    serve_ui(uri, searched_home / "mlruns" / "artifacts", "127.0.0.1", port, lines.append,
             start=lambda *args, **kwargs: SimpleNamespace(wait=lambda: 0))
    assert lines[1:] == [f"  study 'default', trials ranked: http://127.0.0.1:{port}/#/experiments/"
                         f"{experiment.experiment_id}/runs?orderByKey=metrics.%60best_val_dice%60&orderByAsc=false"]


def test_ui_on_a_busy_port_is_an_error(home, cli):
    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = cli("ui", "--port", str(busy.getsockname()[1]))
    assert code == 2 and "is in use (another `unet-opt ui`?); pass another --port" in err


def test_ui_on_an_address_not_of_this_machine_is_an_error_naming_the_address(home, cli):
    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    code, out, err = cli("ui", "--host", "192.0.2.1", "--port", str(free_port()))  # TEST-NET-1: never local
    assert code == 2 and "cannot listen on 192.0.2.1:" in err and "in use" not in err and out == ""


def test_ui_passes_allowed_hosts_to_the_mlflow_server(home):
    from unet_opt.tracking.ui import serve_ui

    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    commands = []

    def start(command, env, start_new_session):
        commands.append(command)
        return SimpleNamespace(wait=lambda: 0)

    for allowed in ("", "tracker.lab:5000"):
        serve_ui(f"sqlite:///{home}/mlruns/mlflow.db", home / "mlruns" / "artifacts", "0.0.0.0", free_port("0.0.0.0"),
                 lambda line: None, start=start, allowed_hosts=allowed)
    assert "--allowed-hosts" not in commands[0]  # MLflow's own default: localhost and private addresses
    assert commands[1][commands[1].index("--allowed-hosts") + 1] == "tracker.lab:5000"


def answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_sigterm_to_ui_stops_the_mlflow_server(searched_home):
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "unet_opt", "ui", "--port", str(port)], cwd=searched_home,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_until(lambda: answers(port), timeout=120, every=0.5):
        ui.kill()
        pytest.fail("the UI did not start")
    ui.send_signal(signal.SIGTERM)
    assert ui.wait(60) == 143
    # nothing answers any more: the server and its workers are gone
    assert wait_until(lambda: not answers(port), timeout=30)
