"""Several machines on one PostgreSQL study and one MLflow tracking server; passwords never leave."""

import os
import re
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import FAST, wait_until
from mlflow.tracking import MlflowClient


def child_runs(tracking_uri: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(f"unet-opt-{experiment}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("unet_opt.role") == "study"]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A fresh database on the server named by UNET_OPT_TEST_POSTGRES (which .ci/run starts), dropped after."""
    server = os.environ.get("UNET_OPT_TEST_POSTGRES")
    if not server:
        pytest.skip("UNET_OPT_TEST_POSTGRES is not set (.ci/run starts a PostgreSQL server and sets it)")
    import psycopg

    name = f"unet_opt_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        yield server.rsplit("/", 1)[0] + "/" + name
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts"),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    def up() -> bool:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return True
        except OSError:
            return server.poll() is not None  # it died: stop waiting

    if not wait_until(up, timeout=120, every=0.5) or server.poll() is not None:
        server.kill()
        pytest.fail("the MLflow server did not start")
    yield url
    server.terminate()
    server.wait(30)


@pytest.fixture
def mlflow_server_folder(mlflow_server, tmp_path_factory) -> Path:
    """The folder behind `mlflow_server`: its database and its artifacts."""
    return next(p for p in tmp_path_factory.getbasetemp().glob("mlflow-server*") if (p / "mlflow.db").exists())


@pytest.mark.slow
def test_two_machines_share_a_postgres_study_and_an_mlflow_server(postgres_url, mlflow_server, tmp_path):
    # two "machines": separate project folders (caches), one study in PostgreSQL, one tracking server
    args = ["search", "--trials", "6", "--study", "shared", "--storage", postgres_url,
            "--tracking-uri", mlflow_server, *FAST]
    machines = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        machines.append(subprocess.Popen([sys.executable, "-m", "unet_opt", *args], cwd=tmp_path / name,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs
    # each machine counts only its own trials
    assert sum(int(re.search(r"(\d+) run now", out).group(1)) for out in outputs) == 6, outputs
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and not [t for t in study.trials if t.state.name != "COMPLETE" and
                                       t.state.name != "PRUNED"]
    assert len({t.user_attrs["worker"].rsplit(":", 1)[1] for t in study.trials}) == 2  # both machines worked
    parents, children = child_runs(mlflow_server, "shared")
    assert len(parents) == 1  # the machines agreed on one parent run
    run_ids = sorted(c.info.run_id for c in children)
    assert run_ids == sorted(t.user_attrs["mlflow_run_id"] for t in study.trials)  # each trial recorded once
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    artifacts = MlflowClient(mlflow_server).list_artifacts(children[0].info.run_id)
    assert {"config.toml", "confusion_matrix.csv"} <= {a.path for a in artifacts}  # files went through the server
    assert not list((tmp_path / "a").glob("mlruns/*"))  # nothing tracked locally


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_never_leaves_the_process(mlflow_server, mlflow_server_folder, tmp_path):
    secret = "Pl4ntedS3cret"
    tracking = mlflow_server.replace("http://", f"http://someone:{secret}@")  # the server ignores it
    outputs = []
    for args in (["search", "--trials", "2", "--tracking-uri", tracking, *FAST], ["report"], ["studies"],
                 ["search", "--trials", "2", "--tracking-uri", tracking, *FAST]):
        run = subprocess.run([sys.executable, "-m", "unet_opt", *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        outputs.append(run.stdout + run.stderr)
    assert "someone:***@" in outputs[0]  # the URL is shown, its password is not
    assert secret not in "".join(outputs)
    # nor in any file: the study storage, the server's database and every artifact the runs logged
    files = [p for folder in (tmp_path, mlflow_server_folder) for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 10 and not [p for p in files if secret.encode() in p.read_bytes()]
