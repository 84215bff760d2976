"""The ranks of a run as a training step sees them: every rank's shard of a global batch."""

import torch

from unet_opt.config.schema import DataConfig
from unet_opt.core.data import batches, load_data


def test_shards_of_a_global_batch_are_what_one_process_sees():
    # 2 ranks, crop augmentation: rank slices of each global batch, put together, are pixel-exact
    data = load_data(DataConfig(synthetic_images=24, image_size=32, augment="crop"), 3)
    indices = list(range(20))

    def run(shard):
        return list(batches(data, indices, 8, shuffle=True, augment="crop", drop_last=True, shard=shard,
                            generator=torch.Generator().manual_seed(5)))

    whole = run((0, 1))
    parts = [run((rank, 2)) for rank in range(2)]
    assert len(whole) == 2 and all(len(p) == 2 for p in parts)
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][step][0], parts[1][step][0]]), x)
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), y)
