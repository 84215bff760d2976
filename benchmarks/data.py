"""Data pipeline benchmark: decode-once cache against decoding every epoch, measured in one run.

Writes a Kaggle-layout folder of generated photos (a few at the drone data set's 6000x4000) and
prints: cold-cache preparation per image, warm-cache epoch data time against decoding every epoch,
and the share of a training epoch spent waiting for data once the cache is warm.

    python benchmarks/data.py [--photos 24] [--large 3] [--image-size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from unet_opt.config.schema import DataConfig, ModelConfig
from unet_opt.core.data import batches, images, load_data, make_split, split_indices
from unet_opt.core.data.classes import ClassTable
from unet_opt.core.data.layouts import find_source
from unet_opt.core.data.synthetic import scene
from unet_opt.core.losses import segmentation_loss
from unet_opt.core.model import build_model


def write_photos(root: Path, photos: int, large: int) -> None:
    """Synthetic scenes upscaled to photo sizes: 1500x1000, and 6000x4000 for the first `large`."""
    (root / "original_images").mkdir(parents=True)
    (root / "label_images_semantic").mkdir()
    table = ClassTable.drone()
    (root / "class_dict_seg.csv").write_text(
        "name, r, g, b\n" + "".join(f"{n}, {r}, {g}, {b}\n" for n, (r, g, b) in zip(table.names, table.colors)))
    for i in range(photos):
        w, h = (6000, 4000) if i < large else (1500, 1000)
        image, mask = scene(i, 400, 600)
        Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR).save(root / "original_images" / f"{i:03d}.jpg",
                                                                              quality=90)
        Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST).save(root / "label_images_semantic" / f"{i:03d}.png")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--large", type=int, default=3, help="how many of them are 6000x4000")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        root, cache_dir = Path(tmp) / "data", Path(tmp) / "cache"
        write_photos(root, args.photos, args.large)
        cfg = DataConfig(dataset=str(root), image_size=args.image_size)
        depth = 4
        source = find_source(root, cfg.num_classes)
        height, width = args.image_size, round(args.image_size * 1.5 / 16) * 16

        # cold cache, per image: the large photos and the others apart
        large = [p for p in source.pairs[: args.large]]
        small = [p for p in source.pairs[args.large:]]
        t_large = timed(lambda: [images.decode_image(i, height, width) for _, i, _ in large]) / max(1, len(large))
        t_small = timed(lambda: [images.decode_image(i, height, width) for _, i, _ in small]) / max(1, len(small))
        t_cold = timed(lambda: load_data(cfg, depth, cache_dir))
        data = load_data(cfg, depth, cache_dir)
        split = split_indices(make_split(data.names, 0.15, 0.15, 42), data.names)
        train = split["train"]

        # one epoch of data, warm cache (memory-mapped) against decoding every image and mask again
        def warm_epoch():
            for _ in batches(data, train, args.batch_size, shuffle=True, augment="crop",
                             generator=torch.Generator().manual_seed(0)):
                pass

        def decoding_epoch():
            for i in train:
                _, image, mask = source.pairs[i]
                images.decode_image(image, height, width)
                images.decode_mask(mask, height, width, source)
            warm_epoch()  # the same batching and augmentation on top

        t_warm, t_decode = timed(warm_epoch), timed(decoding_epoch)

        # share of a training epoch spent waiting for data, warm cache
        model = build_model(ModelConfig(base_channels=16, depth=depth), data.num_classes)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        waiting, start = 0.0, time.perf_counter()
        it = iter(batches(data, train, args.batch_size, shuffle=True, augment="crop",
                          generator=torch.Generator().manual_seed(0)))
        while True:
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            waiting += time.perf_counter() - t0
            loss = segmentation_loss(model(x), y, False)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch = time.perf_counter() - start

    print(f"data benchmark: {args.photos} photos ({args.large} at 6000x4000, the rest 1500x1000), "
          f"frame {height}x{width}, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print("| measure | value |\n| --- | --- |")
    print(f"| cold cache: decode + resize one 6000x4000 JPEG (draft mode) | {t_large * 1000:.0f} ms |")
    print(f"| cold cache: decode + resize one 1500x1000 JPEG | {t_small * 1000:.0f} ms |")
    print(f"| cold cache: whole preparation, per image (mask, digest, write included) | "
          f"{t_cold / args.photos * 1000:.0f} ms |")
    print(f"| epoch data time, warm cache ({len(train)} images, augmentation included) | {t_warm * 1000:.0f} ms |")
    print(f"| epoch data time, decoding every epoch | {t_decode * 1000:.0f} ms |")
    print(f"| ratio decode-every-epoch / warm cache | {t_decode / t_warm:.1f}x |")
    print(f"| training epoch waiting for data, warm cache (target <= 5%) | {100 * waiting / epoch:.1f}% "
          f"({waiting:.2f} s of {epoch:.2f} s) |")


if __name__ == "__main__":
    main()
