"""Image decode through NVIDIA nvImageCodec: a batch decoded in one call, on the GPU (nvJPEG)
or on nvImageCodec's CPU backends, with only each training crop's region decoded.

The crops and flips are those of the CPU decoder for the same seed (drawn by
:func:`~fastload.decode.batch.draw_batch_params`, RandomResizedCrop's ``scale`` and ``ratio``
included), so the backends differ only in how pixels are decoded and resampled:

- training: each image's crop box is its region of interest (nvImageCodec decodes those
  pixels, not the whole image), then resized to the output size (antialiased bilinear) and
  flipped;
- evaluation: the whole image is decoded and resized so that its shorter side is
  ``size / 0.875``, then center-cropped (torchvision's ``Resize`` + ``CenterCrop``).

On a CUDA ``device`` the decode runs on that GPU and the resize with torch's antialiased
bilinear on float pixels there (rounded back to uint8), on the stream given (default: the
current one), not waited for. On the CPU the resize is the CPU decoder's own, so with the same
decoded pixels (nvImageCodec's CPU JPEG decoder is libjpeg-turbo, as Pillow's) the result is
the CPU decoder's, bit for bit, wherever that one decodes at full scale.

The ``nvidia-nvimgcodec-cu12`` (or ``-cu13``) wheel, with ``nvidia-nvjpeg`` for GPU decode, is
imported on first use: ``pip install 'fastload[nvimgcodec]'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

from .batch import draw_batch_params
from .crop import LAYOUTS
from .errors import DecodeError
from .params import DEFAULT_RATIO, DEFAULT_SCALE, EVAL_CROP_RATIO, Crop, ImageRng, eval_resize_size
from .resize import resize_crop_into, resize_into

__all__ = ["NvImageCodecDecoder", "import_nvimgcodec"]

Buffer = Union[bytes, bytearray, memoryview, np.ndarray]


def import_nvimgcodec():
    """The ``nvidia.nvimgcodec`` module, or an ImportError saying what to install."""
    import importlib

    try:
        return importlib.import_module("nvidia.nvimgcodec")
    except ImportError as e:
        raise ImportError(
            "backend='nvimgcodec' needs NVIDIA nvImageCodec: pip install 'fastload[nvimgcodec]' "
            "(the nvidia-nvimgcodec-cu12 wheel with nvJPEG; for CUDA 13, nvidia-nvimgcodec-cu13 "
            "and nvidia-nvjpeg). Its CPU backend runs without a GPU."
        ) from e


class NvImageCodecDecoder:
    """Batches of encoded images (JPEG, PNG, WebP, ...) decoded by nvImageCodec into uint8
    ``(N, H, W, 3)`` (``layout="HWC"``) or ``(N, 3, H, W)`` (``"CHW"``) tensors on ``device``
    (``"cpu"`` or a CUDA device). One decoder per process (it holds nvImageCodec's threads and,
    on a GPU, its CUDA resources); ``num_threads``: nvImageCodec's CPU threads (0: one per
    core)."""

    def __init__(self, *, device: str | torch.device = "cpu", num_threads: int = 0) -> None:
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or a CUDA device, got {device!r}")
        if not isinstance(num_threads, int) or num_threads < 0:
            raise ValueError(f"num_threads must be an int >= 0, got {num_threads!r}")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._n = import_nvimgcodec()
        n = self._n
        if self.device.type == "cuda":
            self._decoder = n.Decoder(device_id=self.device.index, max_num_cpu_threads=num_threads)
        else:
            self._decoder = n.Decoder(
                device_id=n.NVIMGCODEC_DEVICE_CPU_ONLY,
                max_num_cpu_threads=num_threads,
                backends=[n.Backend(n.CPU_ONLY)],
            )
        # EXIF orientation is ignored, and every image becomes RGB, as in the CPU decoder.
        self._params = n.DecodeParams(
            apply_exif_orientation=False,
            color_spec=n.ColorSpec.SRGB,
            sample_format=n.SampleFormat.I_RGB,
        )

    def decode_batch(
        self,
        images: Sequence[Buffer],
        heights: Sequence[int],
        widths: Sequence[int],
        *,
        size: int | tuple[int, int],
        train: bool,
        layout: str = "HWC",
        params: Sequence[tuple[Crop, bool]] | None = None,
        rng: np.random.Generator | None = None,
        rngs: Sequence[ImageRng] | None = None,
        seed: int | None = None,
        scale: tuple[float, float] = DEFAULT_SCALE,
        ratio: tuple[float, float] = DEFAULT_RATIO,
        out: torch.Tensor | None = None,
        stream: Any = None,
    ) -> torch.Tensor:
        """Decode ``images`` (their recorded ``heights``/``widths``) to ``size`` (an int or
        ``(H, W)``; square for eval), returning ``out`` or a new uint8 tensor on the device.

        ``train=True``: each image's ``(Crop, flip)`` from ``params``, else drawn as
        :func:`~fastload.decode.batch.draw_batch_params` draws them (from ``rngs``, one per
        image, or ``rng``, or ``np.random.default_rng(seed)``; with ``scale`` and ``ratio``).
        CUDA: decode and resize are queued on ``stream`` (a ``torch.cuda.Stream`` or a
        cudaStream_t as an int; default the current one). Raises :class:`DecodeError`
        (``.index``: the image's position) for an image that does not decode or is not its
        recorded size; ValueError for bad arguments.
        """
        hw = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
        n = len(images)
        if len(heights) != n or len(widths) != n:
            raise ValueError(f"{n} images but {len(heights)} heights and {len(widths)} widths")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if len(hw) != 2 or min(hw) <= 0:
            raise ValueError(f"size must be positive, got {size!r}")
        crops: Sequence[tuple[Crop, bool]] | None = None  # None: the eval center crop
        if train and params is None:
            if rngs is None and rng is None:
                rng = np.random.default_rng(seed)
            crops = draw_batch_params(
                heights, widths, hw, train=True, rng=rng, rngs=rngs, scale=scale, ratio=ratio
            )
        elif train and params is not None:
            if len(params) != n:
                raise ValueError(f"{n} images but {len(params)} (crop, flip) params")
            crops = params
        elif hw[0] != hw[1]:
            raise ValueError(f"the eval center crop is square; size is {hw[1]}x{hw[0]}")
        shape = (n, hw[0], hw[1], 3) if layout == "HWC" else (n, 3, hw[0], hw[1])
        if out is None:
            out = torch.empty(shape, dtype=torch.uint8, device=self.device)
        elif out.shape != shape or out.dtype != torch.uint8 or out.device != self.device:
            raise ValueError(
                f"out must be a uint8 tensor of shape {shape} on {self.device}, got "
                f"{tuple(out.shape)} {out.dtype} on {out.device}"
            )
        if n == 0:
            return out
        streams = [self._code_stream(i, images[i], heights[i], widths[i]) for i in range(n)]
        if crops is not None:
            streams = [self._region(cs, crop) for cs, (crop, _) in zip(streams, crops)]
        with self._on(stream) as handle:
            decoded = self._decoder.decode(streams, params=self._params, cuda_stream=handle)
            for i, img in enumerate(decoded):
                if img is None:
                    raise DecodeError(
                        f"nvImageCodec could not decode this {len(images[i])}-byte image", i
                    )
                pixels = self._pixels(img)
                if crops is not None:
                    self._resize(pixels, out[i], layout, bool(crops[i][1]))
                else:
                    self._center_crop(pixels, int(heights[i]), int(widths[i]), out[i], layout)
        return out

    # -- one image -------------------------------------------------------------------------
    def _code_stream(self, i: int, data: Buffer, height: int, width: int):
        try:
            # bytes as they are; other buffers as a uint8 view (the caller keeps them alive)
            cs = self._n.CodeStream(
                data if isinstance(data, bytes) else np.frombuffer(data, np.uint8)
            )
            got = (cs.height, cs.width)
        except RuntimeError as e:
            raise DecodeError(
                f"nvImageCodec cannot read this {len(data)}-byte image: {e}", i
            ) from e
        if got != (int(height), int(width)):
            raise DecodeError(
                f"the image is {got[1]}x{got[0]} but its record says {int(width)}x{int(height)}", i
            )
        return cs

    def _region(self, cs, crop: Crop):
        top, left, h, w = (int(v) for v in crop)  # training crops are whole pixels
        region = self._n.Region(top, left, top + h, left + w)  # (y0, x0, y1, x1), end exclusive
        return cs.get_sub_code_stream(region=region)

    def _pixels(self, img) -> torch.Tensor | np.ndarray:
        """A decoded image as (h, w, 3) uint8 sharing its memory: a tensor on the GPU (torch
        keeps the image alive), a numpy array on the CPU (for the CPU decoder's resize)."""
        if self.device.type == "cuda":
            pixels = torch.from_dlpack(img)
            # nvImageCodec may hand an image it could not decode on the GPU to a CPU backend
            return pixels if pixels.device == self.device else pixels.to(self.device)
        return np.asarray(img.cpu())

    def _resize(self, pixels, out: torch.Tensor, layout: str, flip: bool) -> None:
        if self.device.type == "cpu":
            h, w = pixels.shape[:2]
            resize_into(pixels, (0, 0, h, w), out.numpy(), layout, flip)
            return
        oh, ow = out.shape[:2] if layout == "HWC" else out.shape[1:]
        x = _resize_gpu(pixels, (oh, ow))
        if flip:
            x = x.flip(-1)
        _write(x, out, layout)

    def _center_crop(self, pixels, height: int, width: int, out: torch.Tensor, layout: str):
        oh = out.shape[0] if layout == "HWC" else out.shape[1]
        new_h, new_w = eval_resize_size(height, width, oh, EVAL_CROP_RATIO)
        at = (int(round((new_h - oh) / 2.0)), int(round((new_w - oh) / 2.0)))
        if self.device.type == "cpu":
            resize_crop_into(pixels, (new_h, new_w), at, out.numpy(), layout)
            return
        x = _resize_gpu(pixels, (new_h, new_w))[:, at[0] : at[0] + oh, at[1] : at[1] + oh]
        _write(x, out, layout)

    @contextlib.contextmanager
    def _on(self, stream):
        """CUDA: ``stream`` (default the current one) made current, yielding its handle for
        nvImageCodec; CPU: nothing (handle 0)."""
        if self.device.type != "cuda":
            if stream is not None:
                raise ValueError("stream is for a CUDA device; this decoder is on the CPU")
            yield 0
            return
        with torch.cuda.device(self.device):
            if stream is None:
                stream = torch.cuda.current_stream(self.device)
            elif isinstance(stream, int):  # a cudaStream_t as an int
                stream = torch.cuda.ExternalStream(stream, device=self.device)
            with torch.cuda.stream(stream):
                yield stream.cuda_stream


def _resize_gpu(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w, 3) uint8 -> (3, H, W) float, antialiased bilinear (torch's, on the GPU)."""
    x = pixels.permute(2, 0, 1).unsqueeze(0).float()
    x = torch.nn.functional.interpolate(
        x, size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return x[0]


def _write(x: torch.Tensor, out: torch.Tensor, layout: str) -> None:
    """(3, H, W) float pixels rounded into uint8 ``out`` (HWC or CHW)."""
    x = x.round_().clamp_(0, 255)
    out.copy_(x.permute(1, 2, 0) if layout == "HWC" else x)


class NvImageCodecStage:
    """One image field's nvImageCodec decode in the loader's training process, one batch
    ahead: :meth:`submit` an :class:`~fastload.decode.encoded.EncodedBatch` (the crops and
    flips its workers drew) and it is decoded on a thread of its own (on a CUDA ``device``:
    on a stream of its own, which that thread waits for); :meth:`collect` its uint8 pixels
    ``(n, *spec.pixel_shape)``. ``empty(shape)``: a CPU uint8 tensor to decode into (the
    loader's reused buffers), else a new one. Raises
    :class:`~fastload.decode.encoded.BadImagesError` from collect() listing every image of
    the batch that does not decode."""

    def __init__(self, name: str, spec, device: torch.device | None = None, empty=None) -> None:
        self.name = name
        self.spec = spec
        self.device = device if device is not None and device.type == "cuda" else None
        self._empty = empty
        self._decoder: NvImageCodecDecoder | None = None
        self._stream = None
        self._threads = None
        self._pending = None

    def submit(self, batch) -> None:
        """Start decoding ``batch``; one at a time."""
        from concurrent.futures import ThreadPoolExecutor

        if self._pending is not None:
            raise RuntimeError("collect() the batch submitted before")
        if self._threads is None:
            self._threads = ThreadPoolExecutor(1, thread_name_prefix="fastload-nvimgcodec")
        self._pending = self._threads.submit(self._decode, batch)

    def collect(self, empty=None) -> torch.Tensor:
        """The pixels of the batch submitted last (``empty`` is not used: see __init__)."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("collect() without a batch submitted")
        return pending.result()

    def discard(self) -> None:
        """Drop the batch submitted last, if any (waits for its decode to end)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception:
                pass

    def close(self) -> None:
        self.discard()
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None

    # -- on the decode thread ---------------------------------------------------------------
    def _decode(self, batch) -> torch.Tensor:
        shape = (len(batch), *self.spec.pixel_shape)
        if self.device is None:
            out = self._empty(shape) if self._empty is not None else None
            if out is None:
                out = torch.empty(shape, dtype=torch.uint8)
            self._decode_rows(batch, out, None)
            return out
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            out = torch.empty(shape, dtype=torch.uint8, device=self.device)  # for this stream
            self._decode_rows(batch, out, self._stream)
        self._stream.synchronize()  # the pixels are there when collect() returns them
        return out

    def _decode_rows(self, batch, out: torch.Tensor, stream) -> None:
        """Decode every row of ``batch`` into ``out``; a row whose image does not decode is
        left as zeros and listed; BadImagesError at the end if there were any."""
        from .encoded import BadImagesError

        if self._decoder is None:
            self._decoder = NvImageCodecDecoder(device=self.device or "cpu")
        spec, images, start, bad = self.spec, batch.images(), 0, []
        params = batch.params() if spec.train else None
        n = len(batch)
        while start < n:
            rows = slice(start, n)
            try:
                self._decoder.decode_batch(
                    images[rows],
                    batch.heights[rows].tolist(),
                    batch.widths[rows].tolist(),
                    size=spec.hw,
                    train=spec.train,
                    layout=spec.pixel_layout,
                    params=params[rows] if params is not None else None,
                    out=out[rows],
                    stream=stream,
                )
                break
            except DecodeError as e:
                if e.index is None:
                    raise
                i = start + e.index
                out[i] = 0
                bad.append(
                    (
                        i,
                        DecodeError(
                            f"field {self.name!r} of dataset record {int(batch.records[i])}: "
                            f"{e.reason}",
                            i,
                        ),
                    )
                )
                start = i + 1
        if bad:
            raise BadImagesError(bad)
