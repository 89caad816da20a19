"""RandomResizedCrop / eval center-crop parameters (fastload.decode.params)."""

from __future__ import annotations

import numpy as np
import pytest

from fastload.decode import (
    Crop,
    center_crop_params,
    draw_batch_params,
    eval_resize_size,
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
