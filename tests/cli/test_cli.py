"""The `unet-opt` command line itself: entry points, help, version, defaults shown one way, -v, the environment."""

import os
import subprocess
import sys

import pytest
from conftest import interruptible

from unet_opt.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.core.data import load_data, make_split, split_indices
from unet_opt.core.train import fit

COMMANDS = [("search",), ("report",), ("studies",), ("figures",), ("ui",), ("train",), ("retrain",), ("evaluate",),
            ("predict",), ("data", "check"), ("data", "prepare")]


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "unet_opt", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "search" in proc.stdout and "retrain" in proc.stdout


def test_the_command_s_quick_exit_keeps_its_code_its_output_and_every_exit_handler(tmp_path):
    # `entry` skips the interpreter's teardown of its modules (1-2 s with torch and MLflow), nothing else
    code = """
import atexit, sys, tempfile, threading, time
from unet_opt.cli.app import entry
folder = tempfile.TemporaryDirectory(dir=sys.argv[1])  # removed by its exit handler
atexit.register(lambda: print("exit handler ran", end=""))
threading.Thread(target=lambda: (time.sleep(0.5), print("thread done"))).start()  # waited for
sys.argv = ["unet-opt", *sys.argv[2:]]
entry()
"""
    ran = subprocess.run([sys.executable, "-c", code, str(tmp_path), "--version"], capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0 and ran.stdout.startswith("unet-opt, version") and "thread done" in ran.stdout
    assert ran.stdout.endswith("exit handler ran") and list(tmp_path.iterdir()) == []
    wrong = subprocess.run([sys.executable, "-c", code, str(tmp_path), "search", "--trials", "x"], capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: ") and len(wrong.stderr.splitlines()) == 1


@pytest.mark.parametrize("entry_point", ["console script", "python -m unet_opt"])
def test_a_ctrl_c_while_the_commands_are_imported_ends_as_interrupted_without_a_traceback(entry_point):
    # the first tenth of a second of `unet-opt`, before `main` handles Ctrl-C: it ended in Python's traceback
    stop_there = ("import os, signal, sys\n"
                  "class StopWhileImporting:  # Ctrl-C as the commands' modules are imported\n"
                  "    def find_spec(self, name, path=None, target=None):\n"
                  "        if name == 'unet_opt.cli.options':\n"
                  "            os.kill(os.getpid(), signal.SIGINT)\n"
                  "sys.meta_path.insert(0, StopWhileImporting())\n")
    if entry_point == "console script":
        from importlib.metadata import entry_points

        target = entry_points(group="console_scripts")["unet-opt"].value
        module, _, function = target.partition(":")
        code = stop_there + f"from {module} import {function}\nsys.argv = ['unet-opt', '--version']\n{function}()\n"
    else:
        code = stop_there + ("import runpy\nsys.argv = ['unet_opt', '--version']\n"
                             "runpy.run_module('unet_opt', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=interruptible)
    assert (proc.returncode, proc.stderr, proc.stdout) == (130, "interrupted\n", ""), proc.stderr


def test_the_exit_waits_for_other_threads_but_not_for_an_idle_thread_pool():
    # `predict models:/...` and a stopped `figures` never exited: MLflow's artifact download leaves an idle
    # thread-pool worker, which ends only in threading's exit hook, and the exit joined it before that hook
    code = ("import concurrent.futures, threading, time\n"
            "from unet_opt.cli import app\n"
            "pool = concurrent.futures.ThreadPoolExecutor(2)\n"
            "def main():\n"
            "    pool.submit(print, 'pooled').result()\n"
            "    threading.Thread(target=lambda: (time.sleep(0.5), print('joined'))).start()\n"
            "app.main = main\n"
            "app.entry()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "pooled\njoined\n", "")


def test_a_ctrl_c_while_the_exit_waits_for_another_thread_ends_it_as_interrupted():
    # the wait for the command's own threads at exit: a Ctrl-C there gave a traceback from the join
    code = ("import os, signal, threading, time\n"
            "from unet_opt.cli import app\n"
            "def main():\n"
            "    threading.Thread(target=time.sleep, args=(60,)).start()\n"
            "    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
            "app.main = main\n"
            "app.entry()\n")
    # a Ctrl-C that a shell's background job (`pytest &`) would ignore: it timed out in a fresh clone's suite run so
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          preexec_fn=interruptible)
    assert (proc.returncode, proc.stderr) == (130, "interrupted\n"), proc.stderr


def test_a_command_started_with_its_output_closed_exits_0_without_a_traceback():
    # `unet-opt report 1>&-`: Python's sys.stdout is None then, and the exit's flush raised AttributeError
    code = "from unet_opt.cli import app\napp.main = lambda: print('done')\napp.entry()\n"
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=60, pass_fds=(), preexec_fn=lambda: os.close(1))
    assert (proc.returncode, proc.stderr) == (0, "")


def test_report_and_studies_import_no_torch():
    # `report` and `studies` only read the study storage: they must start fast
    code = "import sys, unet_opt.cli.app, unet_opt.study.summary; print('torch' in sys.modules, 'mlflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stdout + proc.stderr


def test_shell_completion_as_the_readme_gives_it_completes_commands_and_options():
    import os

    script = subprocess.run(["unet-opt"], env={**os.environ, "_UNET_OPT_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "complete -o nosort -F _unet_opt_completion unet-opt" in script.stdout
    for words, cword, expected in (("unet-opt rep", "1", "plain,report"), ("unet-opt report --be", "2",
                                                                             "plain,--best-config")):
        proc = subprocess.run(["unet-opt"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "_UNET_OPT_COMPLETE": "bash_complete", "COMP_WORDS": words,
                                   "COMP_CWORD": cword})
        assert expected in proc.stdout.split(), proc.stdout + proc.stderr


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == "unet-opt, version 0.1.0"


def test_the_command_alone_prints_its_help_not_an_error(cli):
    code, out, err = cli()
    assert code == 0 and "search" in out and "retrain" in out and "error" not in err


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_option_shows_its_default_one_way_and_v_follows_the_command(cli, command):
    import click

    from unet_opt.cli.app import cli as group

    ctx = click.Context(group)
    found = group
    for name in command:
        found = found.get_command(ctx, name)
    for option in found.params:
        if isinstance(option, click.Option) and not (option.is_flag or option.required or option.multiple):
            assert option.show_default, f"{' '.join(command)} {option.opts[0]} shows no default"
    assert any("-v" in p.opts for p in found.params)
    shown = " ".join(cli(*command, "--help")[1].split())
    assert "default: " in shown and "default: (" not in shown  # described defaults look like the others


def test_search_s_help_says_a_space_file_s_values_win_over_its_defaults(cli):
    # `--trials [default: 30]` while a space file's trials = 7 ran 7 (a review)
    shown = " ".join(cli("search", "--help")[1].split())
    for default in ("30", "none", "tpe", "contenders", "0", "synthetic"):
        assert f"[default: the space file's, else {default}" in shown or \
               f"default: the space file's, else {default}]" in shown, default


@pytest.mark.parametrize("command", [*COMMANDS, ("data",)], ids=" ".join)
def test_every_command_s_help_shows_an_example_that_names_it(cli, command):
    code, out, _ = cli(*command, "--help")
    assert code == 0 and "Example" in out
    examples = out.split("Example", 1)[1].split("Options:")[0]
    assert f"unet-opt {' '.join(command)}" in examples


def test_q_shows_warnings_only_and_no_bars_before_or_after_the_command(home, cli, monkeypatch):
    import logging

    from unet_opt import progress

    monkeypatch.setenv("UNET_OPT_QUIET", "0")  # -q keeps itself in the environment, for worker processes
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    for args in (("-q", "studies"), ("studies", "-q"), ("studies", "--quiet")):
        cli(*args)
        assert logging.getLogger("unet_opt").level == logging.WARNING and not progress.live()
    from unet_opt import runtime

    runtime.setup(prefix="[w0] ")  # what a --workers process does as it starts: quiet from the environment
    assert logging.getLogger("unet_opt").level == logging.WARNING
    cli("-q", "-v", "studies")  # asking for both: the debug lines, which a bug report needs
    assert logging.getLogger("unet_opt").level == logging.DEBUG
    monkeypatch.setenv("UNET_OPT_QUIET", "0")
    cli("studies")
    assert logging.getLogger("unet_opt").level == logging.INFO and progress.live()


@pytest.mark.slow
def test_studies_json_is_one_list_of_the_table_s_rows(searched_home, cli):
    import json

    code, out, _ = cli("studies", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["study"] for r in rows] == ["default"]
    assert rows[0]["trials"] == 1 and rows[0]["complete"] == 1 and 0 < rows[0]["best"] <= 1
    assert cli("studies", "--json", "--storage", f"sqlite:///{searched_home}/none.db")[0] == 2
    assert cli("report")[1].startswith("study 'default' (maximize val_dice), 1 trial\n")  # not "1 trials" (a review)


def test_v_after_the_command_turns_on_debug_messages(home, cli):
    import logging

    assert cli("studies", "-v")[0] == 2  # no storage here yet: the error path is enough
    assert logging.getLogger("unet_opt").level == logging.DEBUG
    cli("studies")  # a run without -v does not keep it
    assert logging.getLogger("unet_opt").level == logging.INFO


def test_storage_and_tracking_uri_come_from_the_environment_and_help_says_so(home, cli, monkeypatch):
    monkeypatch.setenv("UNET_OPT_STORAGE", f"sqlite:///{home}/elsewhere.db")
    code, _, err = cli("report")
    assert code == 2 and f"{home}/elsewhere.db" in err  # the storage named in the environment was looked at
    help_text = " ".join(cli("retrain", "--help")[1].split())
    assert "env var: UNET_OPT_STORAGE" in help_text and "env var: MLFLOW_TRACKING_URI" in help_text


@pytest.mark.slow
def test_compiled_model_trains(tmp_path):
    data = load_data(DataConfig(image_size=32, synthetic_images=16), depth=2)
    split = split_indices(make_split(data.names, 0.2, 0.2, 0), data.names)
    cfg = Config(model=ModelConfig(base_channels=4, depth=2), train=TrainConfig(batch_size=4, epochs=1, compile=True))
    result = fit(cfg, data, split)
    # torch.compile gives the same kind of result as eager mode
    assert result.epochs_run == 1 and 0 <= result.best_metrics["val_dice"] <= 1


@pytest.mark.parametrize("finished, says", [(3, "run the same command again to continue."),
                                            (5, "every trial it asked for had finished.")])
def test_an_interrupted_search_says_to_run_again_only_when_trials_are_missing(capsys, finished, says):
    # a Ctrl-C after the last trial's line used to say "run the same command again to continue", which
    # then only says "nothing to do"
    from unet_opt.cli.console import print_summary
    from unet_opt.study.summary import Summary

    print_summary(Summary("default", 5, {"complete": finished}, None, interrupted=True), 10.0)
    assert f"interrupted: study 'default' has {finished}/5 finished trials; {says}" in capsys.readouterr().out


def test_a_search_with_nothing_to_do_starts_with_its_line_not_a_blank_one(capsys):
    from unet_opt.cli.console import print_summary
    from unet_opt.study.summary import Summary

    print_summary(Summary("default", 20, {"complete": 35}, None, already_done=True), 0.5)
    assert capsys.readouterr().out.startswith("study 'default' already has 35 finished trials (asked for 20); "
                                              "nothing to do.")


def test_a_search_that_another_one_took_past_its_target_says_so_not_5_of_3(capsys):
    # `--trials 3` and `--trials 5` of one study at once: the first ended "5/3 finished trials"
    from unet_opt.cli.console import print_summary
    from unet_opt.study.summary import Summary

    print_summary(Summary("tiny", 3, {"complete": 5}, None, ran=2), 3.0)
    assert "study 'tiny': 5 finished trials (this command asked for 3), 2 run now in 3 s" in capsys.readouterr().out


def test_a_macro_f1_equal_to_the_dice_beside_it_says_why():
    # a review: "test_dice 0.8285" and "test_f1_macro 0.8285" in every table read as a bug
    from unet_opt.cli.console import metric_rows

    rows = metric_rows({"images": 18, "test_dice": 0.82851, "test_f1_macro": 0.82851, "val_dice": 0.9, "val_f1_macro": 0.7})
    assert rows == [["images", "18"], ["test_dice", "0.8285"],
                    ["test_f1_macro", "0.8285  (= dice: per class, Dice and F1 are one measure)"],
                    ["val_dice", "0.9000"], ["val_f1_macro", "0.7000"]]  # binary: its Dice is the foreground's alone


def test_a_run_s_epochs_are_counted_in_words():
    from unet_opt.runs.runner import epoch_count

    assert [epoch_count(n) for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]  # "for 1 epochs" once
