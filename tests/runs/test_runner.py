"""The runner's pre-flight load of a search's data."""

import numpy as np
import pytest
from datasets import make_dataset

from unet_opt.config.paths import Paths
from unet_opt.config.space_file import load_config
from unet_opt.parallel.placement import plan
from unet_opt.runs.runner import Runner


def test_a_search_s_data_is_checked_at_a_frame_its_trials_train_at(home):
    make_dataset(home / "data", "generic", count=8)
    (home / "sizes.toml").write_text(f"[data]\ndataset = '{home / 'data'}'\nnum_classes = 5\nimage_size = 64\n"
                                     f"[space.image_size]\ntype = 'categorical'\nchoices = [32, 48]\n")
    cfg = load_config(str(home / "sizes.toml"))
    with Runner(Paths.resolve(home), plan("cpu", None, None), fit=None) as runner:
        data = runner.check(cfg, searched=True)
    # the smallest size the space draws, not data.image_size (64), which no trial trains at: no decode for nothing
    assert data.images.shape[-2:] == (32, 48)
    decoded = [entry for entry in (home / "studies" / "cache").rglob("images.npy")]
    assert len(decoded) == 1


@pytest.mark.slow
def test_a_search_decodes_no_frame_outside_its_space(home, cli):
    make_dataset(home / "data", "generic", count=8)
    (home / "sizes.toml").write_text("[data]\ndataset = 'data'\nnum_classes = 5\nimage_size = 64\n[model]\n"
                                     "base_channels = 4\n[train]\nepochs = 1\nbatch_size = 4\n"
                                     "[space.image_size]\ntype = 'categorical'\nchoices = [32, 48]\n")
    code, _, err = cli("search", "--space", "sizes.toml", "--trials", "1")
    assert code == 0, err
    frames = sorted(np.load(p, mmap_mode="r").shape[1:3] for p in (home / "studies" / "cache").rglob("images.npy"))
    assert (64, 96) not in frames and set(frames) <= {(32, 48), (48, 72)}  # checked at 32, and trial #0's
