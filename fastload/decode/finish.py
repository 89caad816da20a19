"""Batch finishing: what a training step wants at the end of the pipeline, made in one pass.

:func:`finish_images` turns a uint8 batch of images (``(N, H, W, C)`` or ``(N, C, H, W)``)
into normalized ``(N, C, H, W)`` float32, float16 or bfloat16 (contiguous or channels_last):
``(x / 255 - mean) / std`` per channel. :func:`finish_tokens` widens uint16/uint32 token rows
to int64 (or int32), optionally shifted by one token into inputs and targets.

Both run where their input lies: a CPU tensor (or numpy array) goes through the compiled
core's loop with the GIL released, a CUDA tensor through a CUDA kernel launched on the given
stream (default: the current one) and never waited for. The two compute the same bits: the
per-element math is written once in the core (``csrc/core/finish_math.h``), float16 and
bfloat16 rounded to nearest even as torch rounds. So the uint8 pixels or uint16 tokens can
cross to the GPU as they are (a quarter of the bytes of float32 or int64) and be finished there.

``mean`` and ``std`` are on the 0..1 scale, as torchvision's ``Normalize`` after ``ToTensor``
(ImageNet's are ``(0.485, 0.456, 0.406)`` and ``(0.229, 0.224, 0.225)``); the kernels apply
them as ``(x - 255 mean) / (255 std)``, which is the same up to float32 rounding (the
tests hold it within 1e-5 of the exact value). Values on the 0..255 scale are refused with a
message saying so.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

from .. import _core

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_DTYPES",
    "TOKEN_DTYPES",
    "TokenDecode",
    "finish_images",
    "finish_tokens",
    "resolve_normalize",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOKEN_DTYPES = (torch.int64, torch.int32)
_LAYOUTS_IN = ("HWC", "CHW")
_LAYOUTS_OUT = ("CHW", "channels_last")

Normalize = Union[str, Sequence, None]  # "imagenet", (mean, std) or None
Stream = Union["torch.cuda.Stream", int, None]


def resolve_normalize(normalize: Normalize, channels: int = 3) -> tuple[tuple, tuple]:
    """``(mean, std)`` on the 0..1 scale for ``normalize``: ``"imagenet"``, a ``(mean, std)``
    pair of per-channel sequences on the 0..1 scale, or None (mean 0, std 1: values x / 255
    in [0, 1]). Raises ValueError for anything else, values on the 0..255 scale included."""
    if normalize is None:
        return (0.0,) * channels, (1.0,) * channels
    if isinstance(normalize, str):
        if normalize != "imagenet":
            raise ValueError(
                f"normalize must be 'imagenet', (mean, std) or None, got {normalize!r}"
            )
        if channels != 3:
            raise ValueError(f"normalize='imagenet' is for 3 channels, not {channels}")
        return IMAGENET_MEAN, IMAGENET_STD
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise ValueError(
            f"normalize must be 'imagenet', a (mean, std) pair or None, got {normalize!r}"
        )
    mean, std = (_channel_values(v, name) for v, name in zip(normalize, ("mean", "std")))
    _check_scale(mean, std, channels)
    return mean, std


def _channel_values(values: Any, name: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ValueError(f"{name} must be a sequence of per-channel numbers, got {values!r}")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numbers, got {values!r}") from e
    return out


def _check_scale(mean: tuple, std: tuple, channels: int) -> None:
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std need one value per channel ({channels}), got {len(mean)} and {len(std)}"
        )
    if not all(math.isfinite(m) and 0.0 <= m <= 1.0 for m in mean) or not all(
        math.isfinite(s) and 0.0 < s <= 1.0 for s in std
    ):
        raise ValueError(
            f"mean and std are on the 0..1 scale (pixel / 255, as torchvision's Normalize after "
            f"ToTensor): each mean in [0, 1], each std in (0, 1]; got mean {mean}, std {std}"
            + (
                " (these look like 0..255-scale values: divide them by 255)"
                if any(m > 1 for m in mean) or any(s > 1 for s in std)
                else ""
            )
        )


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.flags.writeable:
            return torch.from_numpy(x)
        with warnings.catch_warnings():  # torch warns about read-only arrays; this one is read
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch tensor or a numpy array, got {type(x).__name__}")
    return x.detach()


def _stream_handle(device: torch.device, stream: Stream) -> int:
    """The cudaStream_t, as an integer, that a kernel on ``device`` is launched on."""
    if device.type != "cuda":
        if stream is not None:
            raise ValueError(f"stream is for CUDA tensors; these are on {device}")
        return 0
    if stream is None:
        return torch.cuda.current_stream(device).cuda_stream
    if isinstance(stream, int) and not isinstance(stream, bool):
        return stream
    handle = getattr(stream, "cuda_stream", None)
    if not isinstance(handle, int):
        raise TypeError(f"stream must be a torch.cuda.Stream or an int, got {stream!r}")
    return handle


def _device_scope(device: torch.device):
    """CUDA: makes ``device`` current (a tensor is only exported by DLPack from its own)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _check_contiguous(t: torch.Tensor, what: str, hint: str = ".contiguous()") -> None:
    if not t.is_contiguous():
        raise ValueError(
            f"{what} must be C-contiguous (strides {tuple(t.stride())} for shape "
            f"{tuple(t.shape)}): call {hint} first"
        )


def finish_images(
    images: torch.Tensor | np.ndarray,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
    layout_in: str = "HWC",
    layout_out: str = "CHW",
    out: torch.Tensor | None = None,
    stream: Stream = None,
    num_threads: int = 1,
) -> torch.Tensor:
    """``(images / 255 - mean) / std`` per channel as an ``(N, C, H, W)`` tensor of ``dtype``
    (float32, float16 or bfloat16; half types rounded to nearest even), in one pass.

    ``images``: uint8, ``(N, H, W, C)`` for ``layout_in="HWC"`` or ``(N, C, H, W)`` for
    ``"CHW"``, C-contiguous, 1 to 4 channels; a CPU or CUDA tensor (or a numpy array).
    ``mean``/``std``: one value per channel on the 0..1 scale (see the module docstring).
    ``layout_out``: ``"CHW"`` (contiguous) or ``"channels_last"`` (the same shape, stored
    ``(N, H, W, C)``: torch's ``channels_last`` memory format). ``out``: the result's tensor
    (shape, dtype, device and memory format as described), else a new one.

    CUDA: the kernel is launched on ``stream`` (a ``torch.cuda.Stream`` or a ``cudaStream_t``
    as an int; default the current stream) and not waited for; the caller orders it after
    whatever writes ``images`` and before whatever reads the result. A new ``out`` is
    allocated for that stream. CPU: ``num_threads`` threads for large batches (the GIL is
    released). Raises TypeError for wrong dtypes, ValueError for wrong shapes, layouts,
    devices, mean/std, or a non-contiguous tensor; RuntimeError if the kernel cannot launch.
    """
    x = _as_tensor(images, "images")
    if layout_in not in _LAYOUTS_IN:
        raise ValueError(f"layout_in must be one of {_LAYOUTS_IN}, got {layout_in!r}")
    if layout_out not in _LAYOUTS_OUT:
        raise ValueError(f"layout_out must be one of {_LAYOUTS_OUT}, got {layout_out!r}")
    if dtype not in IMAGE_DTYPES:
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if x.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {x.dtype}")
    if x.dim() != 4:
        want = "(N, H, W, C)" if layout_in == "HWC" else "(N, C, H, W)"
        raise ValueError(f"images must be {want} for layout_in={layout_in!r}, got {tuple(x.shape)}")
    _check_contiguous(x, "images")
    n, c, h, w = x.shape[0], *((x.shape[3], *x.shape[1:3]) if layout_in == "HWC" else x.shape[1:])
    if not 1 <= c <= 4:
        raise ValueError(
            f"images must have 1 to 4 channels, got {c} (shape {tuple(x.shape)}, "
            f"layout_in={layout_in!r})"
        )
    mean_t, std_t = _channel_values(mean, "mean"), _channel_values(std, "std")
    _check_scale(mean_t, std_t, c)
    handle = _stream_handle(x.device, stream)
    memory_format = (
        torch.channels_last if layout_out == "channels_last" else torch.contiguous_format
    )
    if out is None:
        with _allocation_stream(x.device, stream):
            out = torch.empty(
                (n, c, h, w), dtype=dtype, device=x.device, memory_format=memory_format
            )
    else:
        _check_out(out, (n, c, h, w), dtype, x.device, memory_format)
    physical = out.detach().permute(0, 2, 3, 1) if layout_out == "channels_last" else out.detach()
    with _device_scope(x.device):
        _core.finish_images(
            x,
            physical,
            layout_in,
            "HWC" if layout_out == "channels_last" else "CHW",
            [float(np.float32(m * 255.0)) for m in mean_t],
            [float(np.float32(s * 255.0)) for s in std_t],
            stream=handle,
            num_threads=int(num_threads),
        )
    return out


def _allocation_stream(device: torch.device, stream: Stream):
    """Where a new result is allocated: for the stream its kernel runs on, so that the caching
    allocator does not hand its memory to another stream while that kernel may still write."""
    if device.type != "cuda" or stream is None:
        return contextlib.nullcontext()
    if isinstance(stream, int):
        stream = torch.cuda.ExternalStream(stream, device=device)
    return torch.cuda.stream(stream)


def _check_out(out: Any, shape: tuple, dtype: torch.dtype, device: torch.device, fmt) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"out must be {dtype}, got {out.dtype}")
    if out.device != device:
        raise ValueError(f"out must be on {device} (as the input), got {out.device}")
    if not out.is_contiguous(memory_format=fmt):
        name = "channels_last" if fmt == torch.channels_last else "contiguous"
        raise ValueError(f"out must be {name} (strides {tuple(out.stride())})")


def finish_tokens(
    rows: torch.Tensor | np.ndarray,
    *,
    dtype: torch.dtype = torch.int64,
    shift: bool = True,
    out: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    stream: Stream = None,
    num_threads: int = 1,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """uint16 or uint32 token ``rows`` ``(B, L)`` widened to ``dtype`` (int64 or int32).

    ``shift=True``: returns ``(inputs, targets)``, each ``(B, L - 1)``: inputs are each row
    but its last token, targets each row but its first (next-token prediction); ``L >= 2``.
    ``shift=False``: returns the ``(B, L)`` tensor. ``out``: the tensor (or the pair) to write
    into. uint32 tokens into int32 are refused (a token over 2**31 - 1 would wrap). Device,
    ``stream`` and ``num_threads`` as :func:`finish_images`.
    """
    x = _as_tensor(rows, "rows")
    if dtype not in TOKEN_DTYPES:
        raise TypeError(f"dtype must be int64 or int32, got {dtype}")
    if x.dtype not in (torch.uint16, torch.uint32):
        raise TypeError(f"token rows must be uint16 or uint32, got {x.dtype}")
    if x.dtype == torch.uint32 and dtype == torch.int32:
        raise TypeError(
            "uint32 tokens cannot be finished as int32 (a token over 2**31 - 1 would "
            "wrap); use dtype=torch.int64"
        )
    if x.dim() != 2:
        raise ValueError(f"token rows must be (B, L), got shape {tuple(x.shape)}")
    _check_contiguous(x, "token rows")
    if not isinstance(shift, bool):
        raise TypeError(f"shift must be a bool, got {shift!r}")
    b, length = x.shape
    if shift and length < 2:
        raise ValueError(f"the next-token shift needs rows of at least 2 tokens, got {length}")
    shape = (b, length - 1 if shift else length)
    handle = _stream_handle(x.device, stream)
    outs: list[torch.Tensor]
    if out is None:
        with _allocation_stream(x.device, stream):
            outs = [torch.empty(shape, dtype=dtype, device=x.device) for _ in range(1 + shift)]
    else:
        if shift:
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ValueError("with shift=True, out must be an (inputs, targets) pair")
            outs = [out[0], out[1]]
        elif isinstance(out, torch.Tensor):
            outs = [out]
        else:
            raise TypeError(f"out must be a torch tensor, got {type(out).__name__}")
        for t in outs:
            _check_out(t, shape, dtype, x.device, torch.contiguous_format)
    with _device_scope(x.device):
        _core.finish_tokens(
            x,
            outs[0].detach(),
            outs[1].detach() if shift else None,
            stream=handle,
            num_threads=int(num_threads),
        )
    return (outs[0], outs[1]) if shift else outs[0]


@dataclass(frozen=True)
class TokenDecode:
    """How a loader finishes a token field: rows widened to ``dtype`` (``torch.int64`` or
    ``torch.int32``) and, with ``shift=True``, split into inputs (the field's name) and
    next-token targets (``targets_name(field)``), each one token shorter than the row.

    On ``device="cuda"`` the uint16/uint32 rows cross to the GPU as they are and are widened
    there; otherwise on the CPU. See :func:`finish_tokens`."""

    dtype: torch.dtype = torch.int64
    shift: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in TOKEN_DTYPES:
            raise ValueError(
                f"TokenDecode dtype must be torch.int64 or torch.int32, got {self.dtype!r}"
            )
        if not isinstance(self.shift, bool):
            raise ValueError(f"TokenDecode shift must be a bool, got {self.shift!r}")

    def out_length(self, length: int) -> int:
        """The length of the finished rows for rows of ``length`` tokens."""
        if self.shift and length < 2:
            raise ValueError(f"the next-token shift needs rows of at least 2 tokens, got {length}")
        return length - 1 if self.shift else length

    @staticmethod
    def targets_name(field: str) -> str:
        """The batch key of a shifted field's targets: ``"<field>_targets"``."""
        return f"{field}_targets"

    def check_tokens(self, token_dtype: np.dtype | torch.dtype) -> None:
        """Raises ValueError unless rows of ``token_dtype`` can be finished as ``self.dtype``."""
        name = str(token_dtype).replace("torch.", "")
        if name not in ("uint16", "uint32"):
            raise ValueError(f"TokenDecode needs uint16 or uint32 tokens, the field has {name}")
        if name == "uint32" and self.dtype == torch.int32:
            raise ValueError(
                "uint32 tokens cannot be finished as int32 (a token over 2**31 - 1 "
                "would wrap); use TokenDecode(dtype=torch.int64)"
            )

    def finish(self, rows, *, out=None, stream: Stream = None, num_threads: int = 1):
        """:func:`finish_tokens` with this spec's dtype and shift."""
        return finish_tokens(
            rows,
            dtype=self.dtype,
            shift=self.shift,
            out=out,
            stream=stream,
            num_threads=num_threads,
        )
