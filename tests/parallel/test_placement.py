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
