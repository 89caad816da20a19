"""Crop a decoded image, resize it (antialiased bilinear), optionally flip it, and write the
result into the caller's array, in HWC or CHW layout.

``torch`` (default)
    ``torch``'s antialiased bilinear on uint8 (the AVX2 kernel torchvision's v2 ``Resize``
    uses for uint8 tensors), on a zero-copy view of the crop, writing straight into ``out``
    through the op's ``out=`` argument: no intermediate image, no transpose copy for CHW. It
    is the same operation as torchvision's ``RandomResizedCrop``/``Resize`` on a uint8 tensor
    (``antialias=True``, the v2 default). About 3x faster than Pillow's resize here.
``pil``
    Pillow's ``resize(..., BILINEAR)`` (also antialiased: the filter widens with the
    downscale factor; torchvision's antialias was written to match it, within 1 level).
    Used where the torch op is missing.

Three operations:

:func:`resize_into`
    crop a whole-pixel box, then resize (the crop's border pixels are not blended with
    pixels outside it), like torchvision's ``RandomResizedCrop``; ``torch`` or ``pil``.
:func:`box_resize_into`
    resize a fractional box (Pillow's ``resize(box=...)``): for crops that a DCT-scaled
    decode leaves between pixels. Rounding them instead shifts the picture by up to half a
    decoded pixel (measured: 2x the difference from the full-resolution result).
:func:`resize_crop_into`
    resize the whole image, then cut a window: torchvision's ``Resize`` + ``CenterCrop``.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from PIL import Image

from .scratch import scratch

# Pillow >= 9.1 has the enums; the plain constants work everywhere (pillow >= 9 is required).
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR  # pyright: ignore[reportAttributeAccessIssue]
_FLIP = getattr(Image, "Transpose", Image).FLIP_LEFT_RIGHT  # pyright: ignore[reportAttributeAccessIssue]

__all__ = [
    "resize_into",
    "box_resize_into",
    "resize_crop_into",
    "available_resize_backends",
    "default_resize_backend",
    "round_box",
]

Box = tuple[int, int, int, int]  # top, left, bottom, right (decoded pixels, exclusive end)


def round_box(top: float, left: float, bottom: float, right: float, rows: int, cols: int) -> Box:
    """Round a fractional box to whole pixels inside ``rows x cols``, at least 1x1."""
    t = min(max(int(round(top)), 0), rows - 1)
    l = min(max(int(round(left)), 0), cols - 1)
    b = min(max(int(round(bottom)), t + 1), rows)
    r = min(max(int(round(right)), l + 1), cols)
    return t, l, b, r


def _target_view(out: np.ndarray, layout: str):
    """``out`` as a (1, 3, H, W) tensor sharing its memory, or None where the resize should
    not write into it directly."""
    import torch

    if not out.flags.c_contiguous:
        # torch's uint8 kernel, given a strided out= that merely looks channels-last or
        # contiguous, writes as if it were dense: past the view (found by the tests). A view
        # that is not C-contiguous gets a scratch result and a strided copy instead.
        return None
    t = torch.from_numpy(out)
    return t.permute(2, 0, 1).unsqueeze(0) if layout == "HWC" else t.unsqueeze(0)


def _torch_resize_into(src: np.ndarray, box: Box, out: np.ndarray, layout: str, flip: bool) -> None:
    import torch

    t, l, b, r = box
    oh, ow = (out.shape[0], out.shape[1]) if layout == "HWC" else (out.shape[1], out.shape[2])
    view = src[t:b, l:r]
    if view.flags.writeable:
        x = torch.from_numpy(view)
    else:  # Pillow's arrays are read-only; torch warns about those, but only reads this one
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(view)
    x = x.permute(2, 0, 1).unsqueeze(0)  # (1, C, h, w) with NHWC strides: no copy
    if flip:
        x = x.flip(-1)  # resize commutes with a horizontal flip (the filter is symmetric)
    channels = src.shape[2]
    target = _target_view(out, layout)
    if channels == 3 and target is not None:
        _aa(x, (oh, ow), target)
        return
    tmp = torch.from_numpy(scratch("resize-out", (oh, ow, channels))).permute(2, 0, 1).unsqueeze(0)
    _aa(x, (oh, ow), tmp)
    if target is not None:
        target.copy_(tmp[:, :3])
    else:
        res = tmp[0, :3].numpy()  # (3, H, W) view
        np.copyto(out, res.transpose(1, 2, 0) if layout == "HWC" else res)


def _aa_private(x, size, target) -> None:
    import torch

    torch._C._nn._upsample_bilinear2d_aa(x, list(size), False, None, None, out=target)  # type: ignore[call-arg]  # pyright: ignore[reportAttributeAccessIssue]


def _aa_public(x, size, target) -> None:
    import torch.nn.functional as F

    target.copy_(
        F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    )


_aa: Callable = _aa_private


def _pil_resize_into(src: np.ndarray, box: Box, out: np.ndarray, layout: str, flip: bool) -> None:
    t, l, b, r = box
    oh, ow = (out.shape[0], out.shape[1]) if layout == "HWC" else (out.shape[1], out.shape[2])
    crop = np.ascontiguousarray(src[t:b, l:r, :3])
    im = Image.fromarray(crop).resize((ow, oh), _BILINEAR)
    if flip:
        im = im.transpose(_FLIP)
    _copy_out(np.asarray(im), out, layout)


def _copy_out(res: np.ndarray, out: np.ndarray, layout: str) -> None:
    """Copy an (H, W, C>=3) image into ``out`` (HWC or CHW)."""
    res = res[:, :, :3]
    np.copyto(out, res if layout == "HWC" else res.transpose(2, 0, 1))


def _as_pil(src: np.ndarray) -> Image.Image:
    """``src`` as a Pillow RGB(X) image; zero-copy for a contiguous RGBX array."""
    if src.shape[2] == 4 and src.flags.c_contiguous:
        return Image.frombuffer("RGBX", (src.shape[1], src.shape[0]), src, "raw", "RGBX", 0, 1)
    return Image.fromarray(np.ascontiguousarray(src[:, :, :3]))


def box_resize_into(
    src: np.ndarray,
    box: tuple[float, float, float, float],
    out: np.ndarray,
    layout: str,
    flip: bool,
) -> None:
    """Resize the fractional box ``(top, left, bottom, right)`` of ``src`` (HWC, 3 or 4
    channels) to ``out``'s size with Pillow's antialiased bilinear ``resize(box=...)``.

    Exact geometry for boxes that do not fall on whole pixels (a DCT-scaled decode of a crop
    whose corners are not multiples of the scale). Unlike crop-then-resize, pixels just
    outside the box contribute to its edge pixels, as when resizing the whole image."""
    t, l, b, r = box
    oh, ow = (out.shape[0], out.shape[1]) if layout == "HWC" else (out.shape[1], out.shape[2])
    rows, cols = src.shape[:2]
    pil_box = (max(0.0, l), max(0.0, t), min(float(cols), r), min(float(rows), b))
    im = _as_pil(src).resize((ow, oh), _BILINEAR, box=pil_box)
    if flip:
        im = im.transpose(_FLIP)
    _copy_out(np.asarray(im), out, layout)


def _torch_resize_crop_into(
    src: np.ndarray, size: tuple[int, int], at: tuple[int, int], out: np.ndarray, layout: str
) -> None:
    import torch

    oh, ow = (out.shape[0], out.shape[1]) if layout == "HWC" else (out.shape[1], out.shape[2])
    if src.flags.writeable:
        x = torch.from_numpy(src)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(src)
    x = x.permute(2, 0, 1).unsqueeze(0)
    channels = src.shape[2]
    tmp = torch.from_numpy(scratch("resize-full", (size[0], size[1], channels)))
    tmp = tmp.permute(2, 0, 1).unsqueeze(0)
    _aa(x, size, tmp)
    window = tmp[:, :3, at[0] : at[0] + oh, at[1] : at[1] + ow]
    target = _target_view(out, layout)
    if target is not None:
        target.copy_(window)
    else:
        _copy_out(window[0].permute(1, 2, 0).numpy(), out, layout)


def _pil_resize_crop_into(
    src: np.ndarray, size: tuple[int, int], at: tuple[int, int], out: np.ndarray, layout: str
) -> None:
    oh, ow = (out.shape[0], out.shape[1]) if layout == "HWC" else (out.shape[1], out.shape[2])
    im = _as_pil(src).resize((size[1], size[0]), _BILINEAR)
    im = im.crop((at[1], at[0], at[1] + ow, at[0] + oh))
    _copy_out(np.asarray(im), out, layout)


def _torch_works() -> bool:
    """Whether torch's uint8 antialiased bilinear runs here (torch >= 2.1), via the private
    ``out=`` op or else ``F.interpolate``; sets which one is used."""
    global _aa
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    src = (np.arange(6 * 10 * 3, dtype=np.uint8) * 7).reshape(6, 10, 3)
    for fn in (_aa_private, _aa_public):
        try:
            _aa = fn
            got = np.zeros((3, 5, 3), np.uint8)
            _torch_resize_into(src, (0, 0, 6, 10), got, "HWC", False)
            ref = np.zeros((3, 5, 3), np.uint8)
            _pil_resize_into(src, (0, 0, 6, 10), ref, "HWC", False)
            if np.abs(got.astype(int) - ref).max() <= 2:
                return True
        except Exception:
            pass
    return False


_BACKENDS: dict[str, Callable] = {"pil": _pil_resize_into}
_RESIZE_CROP: dict[str, Callable] = {"pil": _pil_resize_crop_into}
if _torch_works():
    _BACKENDS["torch"] = _torch_resize_into
    _RESIZE_CROP["torch"] = _torch_resize_crop_into


def available_resize_backends() -> list:
    """Names of the resize paths usable here, fastest first."""
    return [name for name in ("torch", "pil") if name in _BACKENDS]


def default_resize_backend() -> str:
    return available_resize_backends()[0]


def resize_into(
    src: np.ndarray, box: Box, out: np.ndarray, layout: str, flip: bool, backend: str | None = None
) -> None:
    """Resize ``src[top:bottom, left:right]`` (HWC uint8, 3 or 4 channels; only the first 3
    are kept) to ``out``'s size, mirrored left-right if ``flip``, into ``out`` (HWC or CHW)."""
    name = backend or default_resize_backend()
    try:
        fn = _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown or unavailable resize backend {name!r}; "
            f"available: {available_resize_backends()}"
        ) from None
    fn(src, box, out, layout, flip)


def resize_crop_into(
    src: np.ndarray,
    size: tuple[int, int],
    at: tuple[int, int],
    out: np.ndarray,
    layout: str,
    backend: str | None = None,
) -> None:
    """Resize all of ``src`` to ``size`` (H, W), then copy the window of ``out``'s size at
    ``at`` (top, left) into ``out``: torchvision's ``Resize`` then ``CenterCrop``."""
    name = backend or default_resize_backend()
    try:
        fn = _RESIZE_CROP[name]
    except KeyError:
        raise ValueError(
            f"unknown or unavailable resize backend {name!r}; "
            f"available: {available_resize_backends()}"
        ) from None
    fn(src, size, at, out, layout)
