"""RandomResizedCrop / eval center-crop parameters (fastload.decode.params)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastload.decode import (
    Crop,
    center_crop_params,
    check_scale_ratio,
    draw_batch_params,
    eval_resize_size,
    image_rngs,
    random_resized_crop_params,
)


def test_crops_are_inside_the_image_and_in_range():
    rng = np.random.default_rng(0)
    sizes = [(375, 500), (480, 640), (500, 333), (224, 224), (1000, 60), (37, 1200)]
    for _ in range(300):
        for h, w in sizes:
            top, left, ch, cw = random_resized_crop_params(rng, h, w)
            assert all(isinstance(v, int) for v in (top, left, ch, cw))
            assert 0 <= top and top + ch <= h and 0 < ch
            assert 0 <= left and left + cw <= w and 0 < cw


def test_area_and_ratio_follow_scale_and_ratio():
    rng = np.random.default_rng(1)
    h, w = 480, 640
    areas, ratios = [], []
    for _ in range(3000):
        _, _, ch, cw = random_resized_crop_params(rng, h, w)
        areas.append(ch * cw / (h * w))
        ratios.append(cw / ch)
    areas, ratios = np.array(areas), np.array(ratios)
    # Rounding each side to whole pixels moves area and ratio a little past the bounds.
    assert areas.min() >= 0.08 * 0.9 and areas.max() <= 1.0
    assert ratios.min() >= 0.75 * 0.97 and ratios.max() <= (4 / 3) * 1.03
    # Uniform area in [0.08, 1] would average 0.54; large tall crops do not fit a 4:3
    # landscape image and are redrawn, which brings the mean down (to ~0.44).
    assert 0.38 < areas.mean() < 0.5
    # log-uniform ratio; on a square image (no side favoured) its log is centred on 0.
    sq = [random_resized_crop_params(rng, 600, 600) for _ in range(3000)]
    assert abs(np.mean([np.log(cw / ch) for _, _, ch, cw in sq])) < 0.02
    # Both ends of the ranges are reached.
    assert areas.min() < 0.1 and areas.max() > 0.95


def test_deterministic_from_a_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [random_resized_crop_params(rng, 375, 500) for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


@pytest.mark.parametrize(
    "h, w, expected",
    [
        # Far too wide: no attempt fits; center crop of full height, widest allowed ratio.
        (10, 1000, Crop(0, (1000 - 13) // 2, 10, 13)),
        # Far too tall: full width, tallest allowed ratio (w / (3/4) = 13.33 -> 13).
        (1000, 10, Crop((1000 - 13) // 2, 0, 13, 10)),
        (1, 1, Crop(0, 0, 1, 1)),
    ],
)
def test_fallback_center_crop(h, w, expected):
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert random_resized_crop_params(rng, h, w) == expected


def test_fallback_whole_image_for_in_range_ratio():
    # A scale no crop fits makes all 10 attempts fail; a square image is kept whole.
    rng = np.random.default_rng(0)
    assert random_resized_crop_params(rng, 3, 3, scale=(5.0, 6.0)) == Crop(0, 0, 3, 3)


def test_tiny_images_never_give_empty_or_outside_crops():
    rng = np.random.default_rng(3)
    for h in range(1, 8):
        for w in range(1, 8):
            for _ in range(20):
                top, left, ch, cw = random_resized_crop_params(rng, h, w)
                assert ch >= 1 and cw >= 1 and top + ch <= h and left + cw <= w


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        random_resized_crop_params(rng, 0, 10)
    with pytest.raises(ValueError):
        random_resized_crop_params(rng, 10, 10, scale=(1.0, 0.5))


def test_center_crop_matches_torchvision_resize_then_center_crop():
    # 500x375: Resize(256) -> 341x256; CenterCrop(224) offsets round(16.0), round(58.5) = 58.
    assert eval_resize_size(375, 500, 224) == (256, 341)
    top, left, h, w = center_crop_params(375, 500, 224)
    sy, sx = 375 / 256, 500 / 341
    assert (top, left, h, w) == pytest.approx((16 * sy, 58 * sx, 224 * sy, 224 * sx))
    # Portrait.
    assert eval_resize_size(640, 480, 224) == (341, 256)
    top, left, h, w = center_crop_params(640, 480, 224)
    assert left == pytest.approx(16 * 480 / 256) and w == pytest.approx(224 * 480 / 256)
    assert top + h <= 640 + 1e-9


def test_center_crop_of_small_image_is_clamped():
    top, left, h, w = center_crop_params(100, 100, 224, crop_ratio=1.5)
    assert (top, left) == (0, 0) and h == pytest.approx(100) and w == pytest.approx(100)


def test_draw_batch_params_train_and_eval():
    hs, ws = [375, 480, 500], [500, 640, 333]
    a = draw_batch_params(hs, ws, (224, 224), train=True, rng=np.random.default_rng(5))
    b = draw_batch_params(hs, ws, (224, 224), train=True, rng=np.random.default_rng(5))
    assert a == b and len(a) == 3 and all(isinstance(f, bool) for _, f in a)
    flips = [
        f
        for _, f in draw_batch_params(
            [375] * 400, [500] * 400, (224, 224), train=True, rng=np.random.default_rng(6)
        )
    ]
    assert 0.4 < np.mean(flips) < 0.6
    ev = draw_batch_params(hs, ws, (224, 224), train=False)
    assert [f for _, f in ev] == [False] * 3
    assert ev[0][0] == center_crop_params(375, 500, 224)
    with pytest.raises(ValueError):
        draw_batch_params(hs, ws, (224, 224), train=True)
    with pytest.raises(ValueError):
        draw_batch_params(hs, ws[:2], (224, 224), train=False)


# ------------------------------------------------- scale= and ratio=, against torchvision's


def torchvision_get_params(height, width, scale, ratio, uniform, randint):
    """torchvision's ``RandomResizedCrop.get_params``, line for line (torchvision does not
    import beside the CPU torch these tests use), with its random numbers drawn by
    ``uniform(lo, hi)`` and ``randint(lo, hi)`` (hi exclusive) so they can be replayed."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * uniform(scale[0], scale[1])
        aspect_ratio = math.exp(uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = randint(0, height - h + 1)
            j = randint(0, width - w + 1)
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    i = (height - h) // 2
    j = (width - w) // 2
    return i, j, h, w


class Replay:
    """A generator that hands out a fixed list of uniform [0, 1) numbers, in the shape of the
    ``uniform``/``integers`` calls both implementations make."""

    def __init__(self, numbers) -> None:
        self.numbers = list(numbers)
        self.used = 0

    def _next(self) -> float:
        u = self.numbers[self.used]
        self.used += 1
        return u

    def uniform(self, low, high):
        return low + self._next() * (high - low)

    def integers(self, low, high):
        return low + int(self._next() * (high - low))


SCALE_RATIO_CASES = [
    ((0.08, 1.0), (3 / 4, 4 / 3)),
    ((0.25, 0.5), (1.0, 1.0)),
    ((0.5, 1.0), (0.5, 2.0)),
    ((0.9, 1.4), (3 / 4, 4 / 3)),  # areas over 1 never fit: many fallbacks
    ((0.01, 0.02), (2.0, 5.0)),
]


@pytest.mark.parametrize("scale, ratio", SCALE_RATIO_CASES)
def test_the_same_random_numbers_give_torchvisions_crop_exactly(scale, ratio):
    rng = np.random.default_rng(11)
    for h, w in [(375, 500), (500, 333), (64, 64), (20, 900), (900, 20)]:
        for _ in range(200):
            numbers = rng.random(22)
            ours = random_resized_crop_params(Replay(numbers), h, w, scale=scale, ratio=ratio)
            theirs_rng = Replay(numbers)
            theirs = torchvision_get_params(
                h, w, scale, ratio, theirs_rng.uniform, theirs_rng.integers
            )
            assert tuple(ours) == theirs


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic (largest gap between the two CDFs)."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


@pytest.mark.parametrize("scale, ratio", SCALE_RATIO_CASES)
def test_crop_distributions_match_torchvision_drawn_with_torch(scale, ratio):
    """Our draws (numpy) against torchvision's algorithm drawing from torch's generator, as
    torchvision does: areas, aspect ratios and positions follow the same distributions (KS
    distance under the 0.1% critical value for 3000 + 3000 samples), fallbacks as often."""
    import torch

    gen = torch.Generator().manual_seed(0)

    def t_uniform(lo, hi):
        return torch.empty(1).uniform_(lo, hi, generator=gen).item()

    def t_randint(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=gen).item())

    rng = np.random.default_rng(0)
    h, w, n = 375, 500, 3000
    ours = np.array([random_resized_crop_params(rng, h, w, scale, ratio) for _ in range(n)])
    theirs = np.array(
        [torchvision_get_params(h, w, scale, ratio, t_uniform, t_randint) for _ in range(n)]
    )
    critical = 1.95 * math.sqrt(2 / n)
    for a, b in (
        (ours[:, 2] * ours[:, 3], theirs[:, 2] * theirs[:, 3]),  # area
        (np.log(ours[:, 3] / ours[:, 2]), np.log(theirs[:, 3] / theirs[:, 2])),  # aspect
        (ours[:, 0], theirs[:, 0]),  # top
        (ours[:, 1], theirs[:, 1]),  # left
    ):
        assert ks_distance(a.astype(float), b.astype(float)) < critical
    fallback = Crop(*random_resized_crop_params(Replay([0.99999] * 20), h, w, (2, 3), ratio))
    rate_ours = np.mean([tuple(c) == tuple(fallback) for c in ours])
    rate_theirs = np.mean([tuple(c) == tuple(fallback) for c in theirs])
    assert abs(rate_ours - rate_theirs) < 4 * math.sqrt(max(rate_theirs, 1 / n) / n) + 1e-9


def test_scale_and_ratio_bound_the_crops():
    rng = np.random.default_rng(2)
    crops = [random_resized_crop_params(rng, 600, 800, (0.25, 0.5), (1.0, 1.0)) for _ in range(500)]
    for _, _, ch, cw in crops:
        assert abs(cw - ch) <= 1  # square, up to rounding
        assert 0.25 * 0.97 <= ch * cw / (600 * 800) <= 0.5 * 1.03


def test_fallback_when_no_attempt_fits():
    # Ten attempts with areas over the image's: torchvision's central fallback, the same for
    # every draw and clamped to the ratio range.
    rng = np.random.default_rng(0)
    for h, w, ratio in [(300, 300, (0.5, 2.0)), (100, 900, (0.5, 2.0)), (900, 100, (1.0, 1.5))]:
        replay = Replay([0.5] * 20)  # any numbers: no attempt can fit
        want = torchvision_get_params(h, w, (2.0, 3.0), ratio, replay.uniform, replay.integers)
        for _ in range(5):
            assert tuple(random_resized_crop_params(rng, h, w, (2.0, 3.0), ratio)) == want


@pytest.mark.parametrize(
    "scale, ratio",
    [
        ((1.0, 0.5), (3 / 4, 4 / 3)),  # not (min, max)
        ((0.08, 1.0), (4 / 3, 3 / 4)),
        ((-0.1, 1.0), (3 / 4, 4 / 3)),
        ((0.0, 0.0), (3 / 4, 4 / 3)),
        ((0.08, 1.0), (0.0, 1.0)),  # a ratio of 0
        ((0.08, float("nan")), (3 / 4, 4 / 3)),
        ((0.08, 1.0), (3 / 4, float("inf"))),
        ((0.5,), (3 / 4, 4 / 3)),
        ("ab", (3 / 4, 4 / 3)),
        ((0.08, 1.0), None),
    ],
)
def test_bad_scale_or_ratio_is_a_clear_error(scale, ratio):
    with pytest.raises(ValueError, match="scale|ratio"):
        check_scale_ratio(scale, ratio)
    with pytest.raises(ValueError, match="scale|ratio"):
        random_resized_crop_params(np.random.default_rng(0), 10, 10, scale, ratio)
    with pytest.raises(ValueError, match="scale|ratio"):
        draw_batch_params(
            [10], [10], (4, 4), train=True, rng=np.random.default_rng(0), scale=scale, ratio=ratio
        )


def test_draw_batch_params_passes_scale_and_ratio_through():
    hs, ws = [375, 480, 500] * 20, [500, 640, 333] * 20
    got = draw_batch_params(
        hs,
        ws,
        (224, 224),
        train=True,
        rng=np.random.default_rng(3),
        scale=(0.25, 0.5),
        ratio=(1.0, 1.0),
    )
    rng = np.random.default_rng(3)
    for (crop, flip), h, w in zip(got, hs, ws, strict=True):
        assert crop == random_resized_crop_params(rng, h, w, (0.25, 0.5), (1.0, 1.0))
        assert flip == (rng.random() < 0.5)
    default = draw_batch_params(hs, ws, (224, 224), train=True, rng=np.random.default_rng(3))
    assert default != got
    rngs = image_rngs([5, 6], range(len(hs)))
    per_image = draw_batch_params(hs, ws, (224, 224), train=True, rngs=rngs, scale=(0.25, 0.5))
    assert all(
        0.25 * 0.97 <= c.height * c.width / (h * w) <= 0.5 * 1.03
        for (c, _), h, w in zip(per_image, hs, ws, strict=True)
    )
