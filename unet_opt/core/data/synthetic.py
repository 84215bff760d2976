"""The embedded data set: procedural aerial-like scenes labelled with the drone classes.

Each scene is drawn in coordinates relative to the image height, so the same index gives the same
scene at any size; the generator is seeded per image, so it is fully deterministic. Classes are told
apart by colour, texture and shape, but per-image lighting, tint, shadows and noise make colours
overlap (grass / vegetation / tree; paved / gravel / roof), and cars and people are a few pixels wide:
easy to get to a fair Dice, hard to get to a high one, so learning rate, batch size and epochs matter.
"""

from __future__ import annotations

import numpy as np

from unet_opt.core.data.classes import ClassTable

ASPECT = 1.5  # width / height, as the drone photos (6000x4000)
PAVED, DIRT, GRASS, GRAVEL, WATER, POOL, VEGETATION, ROOF, PERSON, CAR, TREE = 1, 2, 3, 4, 5, 7, 8, 9, 15, 17, 19

# photo colour (not the mask colour) and texture strength of each class drawn
LOOK = {
    PAVED: ((118, 116, 112), 6), DIRT: ((138, 108, 74), 14), GRASS: ((84, 128, 52), 12),
    GRAVEL: ((132, 124, 110), 26), WATER: ((42, 72, 112), 5), POOL: ((64, 168, 196), 4),
    VEGETATION: ((72, 112, 44), 24), ROOF: ((146, 74, 62), 5), PERSON: ((205, 170, 140), 10),
    CAR: ((200, 200, 205), 4), TREE: ((40, 78, 32), 16),
}
CAR_COLOURS = np.array([(200, 200, 205), (180, 30, 30), (30, 50, 150), (25, 25, 28), (190, 180, 60)])


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid, bilinearly upsampled to (h, w)."""
    gh, gw = cells + 1, int(cells * ASPECT) + 2
    grid = rng.random((gh, gw))
    ys = np.linspace(0, gh - 1.001, h)
    xs = np.linspace(0, gw - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _box(x, y, cx, cy, half_w, half_h, angle):
    c, s = np.cos(angle), np.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    return (np.abs(u) < half_w) & (np.abs(v) < half_h), u


def scene(index: int, height: int, width: int, seed: int = 0,
          masks_only: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
    """One (image (H, W, 3) uint8, mask (H, W) uint8 class indices) pair; `masks_only`: the same mask and no
    image (None), for the evaluation frame, which only scores. Every random draw is made either way, so
    the mask is the same."""
    rng = np.random.default_rng([seed, index])
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / height  # y in [0, 1), x in [0, 1.5)
    mask = np.full((height, width), GRASS if rng.random() < 0.7 else DIRT, np.uint8)
    shade = None if masks_only else np.ones((height, width), np.float32)

    patches = smooth_noise(rng, height, width, 3)
    mask[patches > 0.62] = VEGETATION if rng.random() < 0.6 else GRAVEL
    if rng.random() < 0.5:
        mask[smooth_noise(rng, height, width, 2) > 0.72] = WATER

    roads = []
    for _ in range(rng.integers(1, 3)):
        angle, width_r = rng.uniform(0, np.pi), rng.uniform(0.05, 0.12)
        cx, cy = rng.uniform(0.2, ASPECT - 0.2), rng.uniform(0.2, 0.8)
        road, along = _box(x, y, cx, cy, 3.0, width_r, angle)
        mask[road] = PAVED
        roads.append((cx, cy, angle, width_r))

    for _ in range(rng.integers(1, 5)):
        cx, cy = rng.uniform(0.1, ASPECT - 0.1), rng.uniform(0.1, 0.9)
        hw, hh, angle = rng.uniform(0.06, 0.16), rng.uniform(0.05, 0.12), rng.uniform(0, np.pi)
        roof, u = _box(x, y, cx, cy, hw, hh, angle)
        mask[roof] = ROOF
        if shade is not None:
            shade[_box(x, y, cx + 0.025, cy + 0.025, hw, hh, angle)[0]] *= 0.6  # its shadow
            shade[roof & (u > 0)] *= 1.25  # the sunlit half of a gabled roof
        if rng.random() < 0.3:
            pool, _ = _box(x, y, cx + hw + 0.07, cy, 0.04, 0.03, angle)
            mask[pool] = POOL

    for _ in range(rng.integers(2, 9)):
        cx, cy, r = rng.uniform(0, ASPECT), rng.uniform(0, 1), rng.uniform(0.03, 0.07)
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        crown = d2 < r * r
        mask[crown] = TREE
        if shade is not None:
            shade[((x - cx - r * 0.5) ** 2 + (y - cy - r * 0.5) ** 2 < r * r) & ~crown] *= 0.55
            shade[crown] *= 1.15 - 0.5 * np.sqrt(d2[crown]) / r

    car_colour = None if masks_only else np.zeros((height, width, 3), np.float32)
    for cx, cy, angle, width_r in roads:
        for _ in range(rng.integers(0, 4)):
            t, lane = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6) * width_r
            px = cx + t * np.cos(angle) - lane * np.sin(angle)
            py = cy + t * np.sin(angle) + lane * np.cos(angle)
            car, _ = _box(x, y, px, py, 0.035, 0.017, angle)
            mask[car] = CAR
            colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
            if car_colour is not None:
                car_colour[car] = colour
    for _ in range(rng.integers(0, 6)):
        cx, cy = rng.uniform(0, ASPECT), rng.uniform(0, 1)
        mask[(x - cx) ** 2 + (y - cy) ** 2 < 0.012**2] = PERSON
    if masks_only:
        return None, mask

    base = np.zeros((len(ClassTable.drone()), 3), np.float32)
    texture = np.zeros(len(ClassTable.drone()), np.float32)
    for cls, (colour, amp) in LOOK.items():
        base[cls], texture[cls] = colour, amp
    tint = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.75, 1.2)  # white balance and exposure of this shot
    fine = rng.standard_normal((height, width)).astype(np.float32)
    image = base[mask] + (texture[mask] * fine)[..., None]
    image = np.where((mask == CAR)[..., None], car_colour, image)
    lighting = 0.85 + 0.3 * smooth_noise(rng, height, width, 1)
    image = image * (shade * lighting)[..., None] * tint
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate(count: int, height: int, width: int, seed: int = 0,
             masks_only: bool = False) -> tuple[np.ndarray | None, np.ndarray, list[str]]:
    """`count` scenes: images (N, H, W, 3) uint8 (None with `masks_only`), masks (N, H, W) uint8, names."""
    images = None if masks_only else np.empty((count, height, width, 3), np.uint8)
    masks = np.empty((count, height, width), np.uint8)
    for i in range(count):
        image, masks[i] = scene(i, height, width, seed, masks_only)
        if images is not None:
            images[i] = image
    return images, masks, [f"synthetic-{i:04d}" for i in range(count)]
