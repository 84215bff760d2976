"""`unet-opt ui`: where it listens, what it prints, how it stops."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, wait_until
from mlflow.tracking import MlflowClient


def test_ui_binds_localhost_unless_told(home, cli):
    from unet_opt.cli.app import ui
    from unet_opt.tracking.ui import mlflow_ui

    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    assert next(p for p in ui.params if p.name == "host").default == "127.0.0.1"
    port = free_port("0.0.0.0")
    server, _ = mlflow_ui(f"sqlite:///{home}/mlruns/mlflow.db", home / "mlruns" / "artifacts", "0.0.0.0", port)
    assert server.command[server.command.index("--host") + 1] == "0.0.0.0" and str(port) in server.command


@pytest.mark.slow
def test_ui_prints_each_study_s_runs_table_ranked_once_its_checks_pass(searched_home):

    from unet_opt.tracking.ui import mlflow_ui

    uri = f"sqlite:///{searched_home}/mlruns/mlflow.db"
    experiment = MlflowClient(uri).get_experiment_by_name("unet-opt-default")
    port = free_port()
    _, pages = mlflow_ui(uri, searched_home / "mlruns" / "artifacts", "127.0.0.1", port)
    assert pages == [("default", f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs?"
                                 "viewStateShareKey=unet-opt-ranked&workflowType=machine_learning")]
    # a study of an earlier version: no saved view, and an experiment named after the study alone
    client = MlflowClient(uri)
    client.delete_experiment_tag(experiment.experiment_id, "mlflow.sharedViewState.unet-opt-ranked")
    client.rename_experiment(experiment.experiment_id, "default")
    _, pages = mlflow_ui(uri, searched_home / "mlruns" / "artifacts", "127.0.0.1", port)
    assert pages == [("default", f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs?"
                                 "orderByKey=metrics.%60best_val_dice%60&orderByAsc=false")]


def test_servers_show_what_they_say_but_their_noise_and_stop_together(capsys):
    from unet_opt.parallel.servers import Server, serve

    talker = Server("the talker", [sys.executable, "-c", "print('[MLflow] Security middleware enabled, as always'); "
                                   "print('a real problem', flush=True)"], noise=("Security middleware",))
    sleeper = Server("the sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
    started = time.monotonic()
    assert serve([talker, sleeper], poll_seconds=0.05) == 1  # the first one ended (with 0): the other was stopped
    assert time.monotonic() - started < 30
    said = []  # what it printed goes to stderr, but for its noise

    def heard() -> bool:
        said.append(capsys.readouterr().err)
        return "a real problem" in "".join(said)

    assert wait_until(heard, timeout=10) and "Security middleware" not in "".join(said)
    assert "error: the talker stopped on its own (exit code 0); see its lines above" in "".join(said)
    failing = Server("the failing one", [sys.executable, "-c", "raise SystemExit(3)"])
    assert serve([failing], poll_seconds=0.05) == 3
    killed = Server("the killed one", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert serve([killed], poll_seconds=0.05) == 1  # not -9, which the shell would read as 247


def test_ui_on_a_busy_port_is_an_error(home, cli):
    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = cli("ui", "--port", str(busy.getsockname()[1]))
    assert code == 2 and "is in use (another `unet-opt ui`?); pass another --port" in err


def test_ui_starts_again_on_the_port_of_a_server_stopped_a_moment_ago():
    """A server that closed its connections to a browser leaves them in TIME_WAIT for a minute: the servers
    bind through them (SO_REUSEADDR), so the check before them must too."""
    from unet_opt.parallel.servers import check_port

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: its end of the connection waits in TIME_WAIT
        time.sleep(0.2)
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):  # what the check did: a bind without the option
        plain.bind(("127.0.0.1", port))
    check_port("127.0.0.1", port)  # no error: nothing listens there


def test_ui_on_an_address_not_of_this_machine_is_an_error_naming_the_address(home, cli):
    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    code, out, err = cli("ui", "--host", "192.0.2.1", "--port", str(free_port()))  # TEST-NET-1: never local
    assert code == 2 and "cannot listen on 192.0.2.1:" in err and "in use" not in err and out == ""


def test_ui_over_a_moved_copy_that_cannot_be_written_serves_it_as_it_is(searched_home, monkeypatch, caplog):
    # a review: a read-only copy of a project (its store pointing at the folder it was made in) gave a traceback
    import sqlite3

    from unet_opt.tracking import tracker
    from unet_opt.tracking.ui import mlflow_ui

    def read_only(*_):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(tracker, "relocate_store", read_only)
    _, pages = mlflow_ui(f"sqlite:///{searched_home}/mlruns/mlflow.db", searched_home / "mlruns" / "artifacts",
                         "127.0.0.1", free_port())
    assert [study for study, _ in pages] == ["default"]
    assert "cannot be rewritten (attempt to write a readonly database): its runs' files are looked for where they " \
           "were made" in caplog.text


def test_ui_passes_allowed_hosts_to_the_mlflow_server(home):
    from unet_opt.tracking.ui import mlflow_ui

    (home / "mlruns").mkdir()
    (home / "mlruns" / "mlflow.db").write_bytes(b"")
    commands = [mlflow_ui(f"sqlite:///{home}/mlruns/mlflow.db", home / "mlruns" / "artifacts", "0.0.0.0",
                          free_port("0.0.0.0"), allowed)[0].command for allowed in ("", "tracker.lab:5000")]
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
    ui = subprocess.Popen([sys.executable, "-m", "unet_opt", "ui", "--port", str(port), "--no-live"], cwd=searched_home,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert wait_until(lambda: answers(port), timeout=120, every=0.5), "the UI did not start"
        # MLflow's launcher and its uvicorn: not its GenAI job runner's 8 more processes (~1.2 GB; a review)
        servers = descendants(ui.pid)
    finally:  # a failing check leaves no server behind
        ui.send_signal(signal.SIGTERM)
    assert ui.wait(60) == 143
    assert len(servers) <= 2, servers
    assert "(Ctrl-C stops it)" in ui.stdout.read()  # one server: not "them" (found by a review)
    # nothing answers any more: the server and its workers are gone
    assert wait_until(lambda: not answers(port), timeout=30)


def descendants(pid: int) -> list[str]:
    """The command lines of every process below `pid`."""
    rows = [line.split(None, 2) for line in subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True,
                                                            text=True, check=True).stdout.splitlines()]
    found, below = [], {pid}
    for _ in range(5):  # a few generations deep
        for child, parent, args in rows:
            if int(parent) in below and int(child) not in below:
                below.add(int(child))
                found.append(args)
    return found


def answers_at(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_ui_serves_the_runs_table_and_the_live_view_with_links_both_ways(searched_home):
    port, live_port = free_port(), free_port()
    ui = subprocess.Popen([sys.executable, "-m", "unet_opt", "ui", "--port", str(port), "--live-port", str(live_port)],
                          cwd=searched_home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: answers(port) and answers_at(f"http://127.0.0.1:{live_port}/api/studies"),
                          timeout=120, every=0.5), "the servers did not start"
        studies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{live_port}/api/studies"))["study_summaries"]
        study_id = studies[0]["study_id"]
        assert answers_at(f"http://127.0.0.1:{live_port}/dashboard/studies/{study_id}")
        for _ in range(3):  # requests: not one line each
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health").close()
    finally:
        ui.send_signal(signal.SIGTERM)
        out, err = ui.communicate(timeout=60)
    assert ui.returncode == 143
    assert f"  study 'default', trials ranked: http://127.0.0.1:{port}/#/experiments/" in out
    assert f"live view:     http://127.0.0.1:{live_port}/dashboard/studies/{study_id}" in out
    # nothing of MLflow's own notices, warnings or request lines: what is left is unet-opt's last word
    assert err.strip().splitlines() == ["terminated"], err
    assert wait_until(lambda: not answers(port) and not answers_at(f"http://127.0.0.1:{live_port}/api/studies"),
                      timeout=30)
    # the two notes link each other: the study's MLflow run to the live view, the live view to the runs
    client = MlflowClient(f"sqlite:///{searched_home}/mlruns/mlflow.db")
    parent = client.search_runs([client.get_experiment_by_name("unet-opt-default").experiment_id],
                                "tags.`unet_opt.role` = 'study'")[0]
    # ... where this `ui` served them (a review: two projects on other ports linked to the first one's pages)
    assert f"http://127.0.0.1:{live_port}/dashboard/studies/{study_id})" in parent.data.tags["mlflow.note.content"]
    import optuna
    from optuna_dashboard import get_note

    study = optuna.load_study(study_name="default", storage=f"sqlite:///{searched_home}/studies/unet-opt.db")
    assert f"http://127.0.0.1:{port}/#/experiments/" in get_note(study)
    assert "viewStateShareKey=unet-opt-ranked" in get_note(study)


def test_the_notes_link_where_ui_last_served_the_study_and_later_notes_too(searched_home):
    import optuna
    from optuna_dashboard import get_note

    from unet_opt.config.space_file import load_config
    from unet_opt.study.dashboard import point_links_at
    from unet_opt.study.summary import describe_parent
    from unet_opt.tracking.tracker import Tracker

    storage, tracking = f"sqlite:///{searched_home}/studies/unet-opt.db", f"sqlite:///{searched_home}/mlruns/mlflow.db"
    study = optuna.load_study(study_name="default", storage=storage)
    client = MlflowClient(tracking)
    parent = study.user_attrs["mlflow_parent_run_id"]

    def notes() -> tuple[str, str]:
        return client.get_run(parent).data.tags["mlflow.note.content"], get_note(study)

    before = notes()
    assert "at its default `--live-port`): [http://127.0.0.1:8080/dashboard/studies/" in before[0]
    other = optuna.create_study(study_name="someone-else", storage=storage)  # not unet-opt's: left alone
    # served over another MLflow store, which lacks the study's runs: nothing is rewritten, and the study is
    # not marked as linked there, so the next `ui` over its own store rewrites the notes (a review found it
    # marked first and then skipped for good)
    (searched_home / "elsewhere.db").touch()  # a store MLflow can open and write: the notes fail on its runs
    point_links_at(storage, f"sqlite:///{searched_home}/elsewhere.db", "http://127.0.0.1:5001",
                   "http://127.0.0.1:8081")
    assert notes() == before and "ui_links" not in study.user_attrs
    point_links_at(storage, tracking, "http://127.0.0.1:5001", "http://127.0.0.1:8081")
    assert other.user_attrs == {}
    mlflow_note, live_note = notes()
    assert mlflow_note.startswith(before[0].rpartition("Live view")[0])  # the rest of the note as it was
    assert mlflow_note.endswith("(at `--live-port 8081`, where `unet-opt ui` last served it): "
                                f"[http://127.0.0.1:8081/dashboard/studies/{study._study_id}]"
                                f"(http://127.0.0.1:8081/dashboard/studies/{study._study_id})")
    assert "(`unet-opt ui`, at `--port 5001`, where `unet-opt ui` last served it)" in live_note
    assert "[http://127.0.0.1:5001/#/experiments/" in live_note
    # a search that goes on writes its note with the same links
    tracker = Tracker(tracking, "default", searched_home / "mlruns" / "artifacts")
    describe_parent(study, tracker, parent, load_config("default").replace({"search.trials": 1}))
    assert notes()[0] == mlflow_note
    point_links_at(storage, tracking, "http://127.0.0.1:5001", None)  # --no-live: the live view's link stays
    assert notes() == (mlflow_note, live_note)
    point_links_at(storage, tracking, "http://127.0.0.1:5000", "http://127.0.0.1:8080")  # the defaults again
    assert notes()[0] == before[0]


def test_the_notes_of_a_project_that_cannot_be_written_keep_their_links_without_a_word(searched_home, monkeypatch,
                                                                                       caplog):
    # a review: on a read-only mount MLflow logged its failed write with a traceback before `ui` went on
    import os

    from unet_opt.study.dashboard import point_links_at

    database = searched_home / "mlruns" / "mlflow.db"
    tags = sqlite3_tags(database)
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: access(path, mode) and Path(path) != database)
    point_links_at(f"sqlite:///{searched_home}/studies/unet-opt.db", f"sqlite:///{database}", "http://127.0.0.1:5001",
                   "http://127.0.0.1:8081")
    assert sqlite3_tags(database) == tags and not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


def sqlite3_tags(database) -> list:
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT run_uuid, key, value FROM tags ORDER BY run_uuid, key").fetchall()
