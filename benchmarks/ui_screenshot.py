"""Screenshots of `unet-opt ui` for the README: starts the MLflow UI on a searched project folder, opens the
study's runs table in headless Chromium and saves it as a PNG (and, with --run-name, that run's page too).
tests/tracking/test_ui_browser.py uses the same functions to check that the table lists the trials.

    python benchmarks/ui_screenshot.py --home FOLDER [--out docs/runs.png] [--run-name trial-0001 [--run-out PNG]]

Chromium (Debian's `chromium`, or chromium-browser / google-chrome) is driven over the DevTools protocol on
a pipe (--remote-debugging-pipe), which needs no library: the page is polled until every run is listed
instead of guessing a delay, and the UI's settings kept in localStorage (its assistant panel, which it
opens by itself in a fresh browser profile) are set before the page loads. The table shows what a user gets:
the ranked shared view that `unet-opt search` saves with the study (see unet_opt.tracking.Tracker.save_ranked_view).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# The UI's localStorage entries (key_v<version>: a JSON value) for its assistant panel, which it opens by
# itself on a local server in a fresh profile and which would cover a third of a screenshot: opened once
# already, and closed.
CLOSED_ASSISTANT = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false"}


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def ui_server(home: Path, port: int, timeout: float = 120.0) -> Iterator[str]:
    """`unet-opt --home HOME ui --port PORT` until the block ends; yields its URL once it answers HTTP."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "UNET_OPT_HOME")}
    log = tempfile.TemporaryFile()
    ui = subprocess.Popen([sys.executable, "-m", "unet_opt", "--home", str(home), "ui", "--port", str(port)],
                          env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                if ui.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")
                    raise RuntimeError(f"`unet-opt ui` did not answer on {url}:\n{output}") from None
                time.sleep(0.5)
        yield url
    finally:
        if ui.poll() is None:
            ui.send_signal(signal.SIGTERM)  # unet-opt stops the server's process group, then exits
            try:
                ui.wait(30)
            except subprocess.TimeoutExpired:
                ui.kill()
                ui.wait()
        log.close()


def study_runs(home: Path, experiment: str | None = None) -> tuple[str, dict]:
    """(experiment id, {run name: mlflow Run}) of the study's experiment: the one named `experiment`, else
    the first that holds trial runs (named trial-NNNN; the parent is named after the study), whatever its name."""
    from mlflow import MlflowClient

    from unet_opt.config.paths import Paths

    client = MlflowClient(tracking_uri=Paths.resolve(home).tracking_uri())
    for exp in client.search_experiments():
        if experiment is not None and exp.name != experiment:
            continue
        runs = {run.info.run_name: run for run in client.search_runs([exp.experiment_id])}
        if experiment is not None or any(name.startswith("trial-") for name in runs):
            return exp.experiment_id, runs
    raise RuntimeError(f"no experiment {experiment!r} in {home}" if experiment else f"no trial runs in {home}")


def trial_names(runs: dict) -> list[str]:
    """The names of the trials' runs as the ranked view lists them (it lists no other run), best first."""
    return sorted(name for name, run in runs.items() if "optuna.trial" in run.data.tags)


def runs_table_url(server: str, experiment_id: str) -> str:
    """The page `unet-opt ui` points to: the study's runs table in its ranked view."""
    from unet_opt.tracking.ui import ranked_table_url

    return ranked_table_url(server, experiment_id)


def run_page_url(server: str, experiment_id: str, run_id: str) -> str:
    return f"{server}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def above(fd: int, lowest: int = 10) -> int:
    """`fd` moved to a number >= `lowest` (and closed on exec)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium over the DevTools protocol on a pipe: commands go to its fd 3 and replies come
    from its fd 4, each one JSON text ended by a NUL byte. One page, in a throwaway profile."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1000):
        self.profile = tempfile.TemporaryDirectory(prefix="unet-opt-chromium-")
        # all four ends above fd 4, so that placing Chromium's on 3 and 4 in the child overwrites neither
        commands_in, self._out = (above(fd) for fd in os.pipe())
        self._in, replies_out = (above(fd) for fd in os.pipe())

        def on_fds_3_and_4() -> None:
            os.dup2(commands_in, 3)  # the copies are inheritable
            os.dup2(replies_out, 4)

        args = [binary, "--headless=new", "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--mute-audio",
                f"--user-data-dir={self.profile.name}", f"--window-size={width},{height}", "--remote-debugging-pipe"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        try:
            self.process = subprocess.Popen([*args, "about:blank"], preexec_fn=on_fds_3_and_4, close_fds=False,
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        finally:
            os.close(commands_in)
            os.close(replies_out)
        self._buffer = b""
        self._next_id = 0
        try:
            page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False, session=True)
            self.send("Page.enable", session=True)  # without it, scripts added for new documents do not run
            self.preset(CLOSED_ASSISTANT)
        except BaseException:
            self.close()
            raise

    def send(self, method: str, timeout: float = 30.0, session: bool = False, **params) -> dict:
        """One DevTools command (to the page when `session`, else to the browser); returns its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                text, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(text)
                if reply.get("id") == self._next_id:  # anything else is an event, not needed here
                    if "error" in reply:
                        raise RuntimeError(f"Chromium: {method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {method} in {timeout:.0f} s")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.process.poll()}) before answering {method}")
            self._buffer += chunk

    def preset(self, local_storage: dict[str, str]) -> None:
        """These localStorage entries in every page loaded from now on, set before its own scripts run."""
        source = "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in local_storage.items())
        self.send("Page.addScriptToEvaluateOnNewDocument", source=source, session=True)

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url, session=True)

    def text(self) -> str:
        """The page's visible text."""
        result = self.send("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                           returnByValue=True, session=True)
        return result["result"].get("value", "")

    def wait_for(self, texts: list[str], timeout: float = 60.0) -> str:
        """The page's visible text once it shows every one of `texts`; TimeoutError naming those missing."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.text()
            missing = [t for t in texts if t not in shown]
            if not missing:
                return shown
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout:.0f} s the page does not show {missing}; it shows:\n{shown}")
            time.sleep(0.5)

    def screenshot(self, path: Path, settle: float = 1.0) -> None:
        time.sleep(settle)  # the table's last layout pass, after its text is there
        data = self.send("Page.captureScreenshot", format="png", session=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a project folder after `unet-opt search`")
    parser.add_argument("--out", type=Path, default=Path("docs/runs.png"), help="PNG of the runs table")
    parser.add_argument("--port", type=int, default=0, help="for `unet-opt ui` (default: a free one)")
    parser.add_argument("--experiment", help="MLflow experiment (default: the first one with trial runs)")
    parser.add_argument("--run-name", help="also save this run's page (e.g. trial-0001, or the study's name)")
    parser.add_argument("--run-out", type=Path, help="PNG of the run's page (default: OUT's name + -run.png)")
    parser.add_argument("--size", default="1600x1000", help="window WIDTHxHEIGHT")
    args = parser.parse_args()
    browser = find_browser()
    if browser is None:
        sys.exit(f"none of {', '.join(BROWSERS)} is on PATH; install one (Debian: apt-get install chromium)")
    width, height = (int(n) for n in args.size.lower().split("x"))
    experiment_id, runs = study_runs(args.home, args.experiment)
    if args.run_name and args.run_name not in runs:
        sys.exit(f"no run {args.run_name!r}; runs: {', '.join(sorted(runs))}")
    with ui_server(args.home, args.port or free_port()) as server, Browser(browser, width, height) as page:
        page.open(runs_table_url(server, experiment_id))
        page.wait_for(trial_names(runs))
        page.screenshot(args.out)
        print(f"runs table: {args.out}")
        if args.run_name:
            run_out = args.run_out or args.out.with_name(f"{args.out.stem}-run.png")
            page.open(run_page_url(server, experiment_id, runs[args.run_name].info.run_id))
            page.wait_for([args.run_name, "Parameters"])
            page.screenshot(run_out)
            print(f"run page: {run_out}")


if __name__ == "__main__":
    main()
