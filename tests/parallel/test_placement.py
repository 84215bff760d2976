"""Placements: GPU groups for workers and batch splits over processes."""

import pytest

from unet_opt.errors import UserError
from unet_opt.parallel.placement import Placement, check_divisible


def test_gpu_groups_for_workers_and_batch_splits():
    four = Placement("cuda", 4, (0, 1, 2, 3))
    assert [w.gpu_ids for w in four.split(2)] == [(0, 1), (2, 3)] and four.split(2)[0].procs == 2
    with pytest.raises(UserError, match="--workers 3 cannot share 4 GPU"):
        four.split(3)
    check_divisible([4, 8, 12], 4)
    with pytest.raises(UserError, match="train.batch_size = 4 cannot be split evenly over 8 processes"):
        check_divisible([4, 8], 8)


def test_gpu_ranks_share_the_cores_as_cpu_processes_do(monkeypatch):
    # a review: each rank on a GPU took every core (torch's default), N ranks fighting over them
    from unet_opt.parallel.placement import plan

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert plan("auto", "all", None).threads == 4 and plan("cuda", "2", None).threads == 8
    assert plan("cuda", "1", None).threads == 0  # one process: torch's default, every core
    assert [w.threads for w in plan("cuda", "all", None).split(2)] == [4, 4]  # 4 processes in all
    assert plan("cpu", None, 2).threads == 8
