"""``ImageDecode``: how the loader decodes, augments and finishes an image field.

Decoding gives uint8 pixels (RandomResizedCrop + flip for training, resize + center crop for
evaluation). With a float ``dtype`` they are then *finished*: ``(x / 255 - mean) / std`` per
channel, as float32, float16 or bfloat16, in one pass of the compiled core's loop (CPU) or
its CUDA kernel (fastload/decode/finish.py). Where that pass runs is the loader's business:
on the GPU after the uint8 pixels crossed PCIe when ``device="cuda"``, on the CPU otherwise
(see delivery.py and fill.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..decode.finish import IMAGE_DTYPES, Normalize, finish_images, resolve_normalize
from ..decode.params import DEFAULT_RATIO, DEFAULT_SCALE, check_scale_ratio

__all__ = ["ImageDecode", "BACKENDS", "LAYOUTS", "DTYPES"]

BACKENDS = ("cpu", "dali", "nvimgcodec")
LAYOUTS = ("HWC", "CHW")
DTYPES = (torch.uint8, *IMAGE_DTYPES)


@dataclass(frozen=True, init=False)
class ImageDecode:
    """Decode an image field into fixed-size pixels: ``ImageDecode(size, *, train=True,
    scale=(0.08, 1.0), ratio=(3/4, 4/3), normalize=None, dtype=torch.uint8, layout=None,
    backend="cpu", dali_threads=None)``.

    - ``size``: the output's side (an int), or ``(height, width)`` (training only: the eval
      center crop is square).
    - ``train=True``: torchvision's RandomResizedCrop(size, ``scale``, ``ratio``) + random
      horizontal flip (``scale``: the crop's area as a fraction of the image's; ``ratio``: its
      width / height); ``train=False``: resize to ``size / 0.875`` + center crop ``size``.
    - ``dtype``: ``torch.uint8`` (default: the pixels as decoded), or ``torch.float32``,
      ``torch.float16``, ``torch.bfloat16``: pixels finished as ``(x / 255 - mean) / std``.
    - ``normalize`` (float dtypes only): ``"imagenet"`` (mean 0.485, 0.456, 0.406 and std
      0.229, 0.224, 0.225), a ``(mean, std)`` pair of per-channel values **on the 0..1 scale**
      (as torchvision's ``Normalize`` after ``ToTensor``), or None: ``x / 255`` in [0, 1].
    - ``layout``: ``"HWC"`` gives ``(n, H, W, 3)`` batches, ``"CHW"`` ``(n, 3, H, W)``; the
      default is ``"HWC"`` for uint8 (as decoded) and ``"CHW"`` for float types (what a model
      takes). Both are contiguous.
    - ``backend``: ``"cpu"`` (the workers decode), ``"dali"`` (NVIDIA DALI in the training
      process: on the GPU with ``device="cuda"``, its CPU backend otherwise, with
      ``dali_threads`` threads) or ``"nvimgcodec"`` (NVIDIA nvImageCodec in the training
      process: nvJPEG on the GPU with ``device="cuda"``, its CPU backend otherwise). Every
      backend takes the same crops and flips for the same seed; a missing library is an
      ImportError here, saying what to install.
    """

    size: int | tuple
    train: bool
    scale: tuple
    ratio: tuple
    normalize: Normalize
    dtype: torch.dtype
    layout: str
    backend: str
    dali_threads: int | None

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        *,
        train: bool = True,
        scale: Sequence[float] = DEFAULT_SCALE,
        ratio: Sequence[float] = DEFAULT_RATIO,
        normalize: Normalize = None,
        dtype: torch.dtype = torch.uint8,
        layout: str | None = None,
        backend: str = "cpu",
        dali_threads: int | None = None,
    ) -> None:
        values = {
            "size": _checked_size(size, train),
            "train": _checked_bool(train, "train"),
            "dtype": _checked_dtype(dtype),
            "backend": _checked_choice(backend, BACKENDS, "backend"),
        }
        values["scale"], values["ratio"] = check_scale_ratio(scale, ratio)
        values["normalize"] = _checked_normalize(normalize, values["dtype"])
        if layout is None:
            layout = "HWC" if values["dtype"] == torch.uint8 else "CHW"
        values["layout"] = _checked_choice(layout, LAYOUTS, "layout")
        if dali_threads is not None and (
            backend != "dali"
            or isinstance(dali_threads, bool)
            or not isinstance(dali_threads, int)
            or dali_threads < 1
        ):
            raise ValueError(
                f"dali_threads must be a positive int, with backend='dali'; got {dali_threads!r}"
            )
        values["dali_threads"] = dali_threads
        for name, value in values.items():
            object.__setattr__(self, name, value)
        _import_backend(values["backend"])  # not installed: say so now

    # -- what the loader needs to know -----------------------------------------------------
    @property
    def hw(self) -> tuple[int, int]:
        """``(height, width)`` of the output."""
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One sample's shape in a batch."""
        h, w = self.hw
        return (h, w, 3) if self.layout == "HWC" else (3, h, w)

    @property
    def finished(self) -> bool:
        """Whether the decoded pixels are finished into a float type."""
        return self.dtype != torch.uint8

    @property
    def pixel_layout(self) -> str:
        """The layout the decoder writes its uint8 pixels in: the output's for uint8, HWC
        before finishing (the decoders write HWC fastest, and the finishing pass transposes
        for free)."""
        return "HWC" if self.finished else self.layout

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """One sample's uint8 pixels as decoded, before finishing."""
        h, w = self.hw
        return (h, w, 3) if self.pixel_layout == "HWC" else (3, h, w)

    @property
    def mean_std(self) -> tuple[tuple, tuple]:
        """``(mean, std)`` on the 0..1 scale (mean 0, std 1 without ``normalize``)."""
        return resolve_normalize(self.normalize)

    def finish(
        self,
        pixels: Any,
        *,
        out: torch.Tensor | None = None,
        stream: Any = None,
        num_threads: int = 1,
    ) -> torch.Tensor:
        """A uint8 batch ``(n, *pixel_shape)`` (CPU or CUDA) finished into ``(n, *shape)`` of
        ``dtype`` (``out`` if given), by :func:`fastload.decode.finish_images` on its device
        (CUDA: on ``stream``, not waited for)."""
        mean, std = self.mean_std
        kw = dict(mean=mean, std=std, dtype=self.dtype, layout_in="HWC", stream=stream)
        if self.layout == "CHW":
            return finish_images(pixels, layout_out="CHW", out=out, num_threads=num_threads, **kw)
        # HWC floats: the kernel's channels_last result is (n, H, W, 3) in memory
        nchw = out.permute(0, 3, 1, 2) if out is not None else None
        done = finish_images(
            pixels, layout_out="channels_last", out=nchw, num_threads=num_threads, **kw
        )
        return done.permute(0, 2, 3, 1)


def _checked_size(size: Any, train: bool) -> int | tuple:
    if isinstance(size, bool):
        raise ValueError(f"size must be an int or an (height, width) pair, got {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size!r}")
        return size
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or an (height, width) pair, got {size!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise ValueError(f"size must be positive ints, got {size!r}")
    if not train and h != w:
        raise ValueError(f"the eval center crop is square; size {size!r} is not")
    return (h, w)


def _checked_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _checked_choice(value: Any, choices: tuple, name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _checked_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or dtype not in DTYPES:
        raise TypeError(
            "dtype must be torch.uint8 (the decoded pixels), torch.float32, torch.float16 "
            f"or torch.bfloat16 (normalized), got {dtype!r}"
        )
    return dtype


def _checked_normalize(normalize: Normalize, dtype: torch.dtype) -> Normalize:
    """``normalize`` checked (ValueError) and made hashable: "imagenet", None or a
    ``(mean, std)`` pair of float tuples."""
    if normalize is not None and dtype == torch.uint8:
        raise ValueError(
            "normalize= gives float values: pass dtype=torch.float32, torch.float16 or "
            "torch.bfloat16 with it (dtype=torch.uint8 is the decoded pixels as they are)"
        )
    mean, std = resolve_normalize(normalize)
    return normalize if normalize is None or isinstance(normalize, str) else (mean, std)


def _import_backend(backend: str) -> None:
    if backend == "dali":
        from ..decode.dali import import_dali

        import_dali()
    elif backend == "nvimgcodec":
        from ..decode.nvimgcodec import import_nvimgcodec

        import_nvimgcodec()
