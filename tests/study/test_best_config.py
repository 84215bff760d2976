"""`report --best-config FILE`: a file that `train --space FILE` trains again, from wherever it is run."""

import shutil

from conftest import run_search
from datasets import TABLE, make_dataset


def test_the_best_config_names_its_data_folder_from_anywhere_and_says_so_once_it_moved(home, cli, monkeypatch):
    make_dataset(home / "data", "generic", count=12)
    run_search(home, 1, 'data.dataset="data"', f"data.num_classes={len(TABLE)}", 'search.pruner="none"')
    elsewhere = home / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where `data` is not: the study keeps the path as its search was given it
    code, out, err = cli("--home", str(home), "report", "--best-config", "-")
    assert code == 0, err
    assert f'dataset = "{(home / "data").resolve()}"' in out  # found by a review: "data", from here nowhere
    assert "unet-opt train --space FILE   (its" in out
    shutil.move(home / "data", home / "moved")
    code, out, err = cli("--home", str(home), "report", "--best-config", "-")
    assert code == 0, err
    assert 'dataset = "data"' in out and "unet-opt train --space FILE --data PATH   (its data folder is no longer " \
                                         "there: PATH is where it is now)" in out
