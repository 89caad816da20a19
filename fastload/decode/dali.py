"""Image decode and augmentation through NVIDIA DALI: on the GPU where the loader's ``device``
is CUDA (DALI's "mixed" decoder, nvJPEG), on DALI's CPU backend otherwise.

``DataLoader(decode={"image": ImageDecode(224, train=True, backend="dali")})``. The workers
read a batch's encoded images and draw its crops and flips exactly as for the CPU decoder
(the same seed gives the same boxes, so the two backends differ only in resampling); they send
the bytes end to end with those parameters, an :class:`~fastload.decode.encoded.EncodedBatch`.
The consumer feeds it to a
DALI pipeline (external_source, decoders.image_slice, resize, flip, transpose) one batch
ahead of the batch it hands out, so the next batch decodes while the training step runs.

A bad image fails the whole DALI batch and leaves the pipeline unusable, without saying
which image it was. :class:`DaliDecoder` then builds a new pipeline and decodes the batch's
images one by one on it to find the bad ones, and raises :class:`DecodeError` naming the
record (or, under ``bad_samples="skip"``, reports them so the loader drops them).

nvidia-dali (``pip install 'fastload[dali]'``: the ``nvidia-dali-cuda120`` wheel) is imported
only when such a loader first decodes.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .encoded import BadImagesError, EncodedBatch
from .errors import DecodeError

__all__ = ["DaliDecoder", "import_dali"]


def import_dali():
    """nvidia.dali's ``fn``, ``types`` and ``Pipeline``, or an ImportError saying what to
    install."""
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali.pipeline import Pipeline
    except ImportError as e:
        raise ImportError(
            "ImageDecode(backend='dali') needs NVIDIA DALI: pip install "
            "'fastload[dali]' (the nvidia-dali-cuda120 wheel; it runs on the "
            "CPU too)"
        ) from e
    return fn, types, Pipeline


class DaliDecoder:
    """One image field's DALI pipeline: :meth:`submit` a :class:`EncodedBatch`, then
    :meth:`collect` its pixels as a torch uint8 tensor ``(n, *spec.pixel_shape)`` on ``device``
    (CUDA: decoded on that GPU; else on the CPU), owned by torch (DALI's output buffers are
    reused by its next batch, so they are copied out)."""

    def __init__(self, name: str, spec, batch_size: int, device=None) -> None:
        self.name = name
        self.spec = spec
        self.batch_size = batch_size
        self.gpu = device is not None and device.type == "cuda"
        self.device = device
        self.threads = spec.dali_threads or min(
            8,
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1,
        )
        self._pipe = None
        self._fed: EncodedBatch | None = None
        self._stream = None  # CUDA: the stream the pixels are copied out on

    # -- the pipeline ---------------------------------------------------------------------
    def _build(self):
        fn, types, Pipeline = import_dali()
        spec, h, w = self.spec, *self.spec.hw
        device_id = None
        if self.gpu and self.device is not None:
            device_id = (
                self.device.index
                if self.device.index is not None
                else __import__("torch").cuda.current_device()
            )
        pipe = Pipeline(
            batch_size=self.batch_size,
            num_threads=self.threads,
            device_id=device_id,
            prefetch_queue_depth=1,
        )
        where = "mixed" if self.gpu else "cpu"
        with pipe:
            data = fn.external_source(name="data", dtype=types.UINT8, no_copy=True)
            if spec.train:
                anchor = fn.external_source(name="anchor", dtype=types.FLOAT)
                shape = fn.external_source(name="shape", dtype=types.FLOAT)
                flip = fn.external_source(name="flip", dtype=types.INT32)
                images = fn.decoders.image_slice(
                    data,
                    anchor,
                    shape,
                    device=where,
                    output_type=types.RGB,
                    axis_names="WH",
                    normalized_anchor=False,
                    normalized_shape=False,
                )
                images = fn.resize(
                    images, resize_x=w, resize_y=h, antialias=True, interp_type=types.INTERP_LINEAR
                )
                images = fn.flip(images, horizontal=flip)
            else:  # the eval box (fractional) resized in one step, as the CPU decoder does
                start = fn.external_source(name="roi_start", dtype=types.FLOAT)
                end = fn.external_source(name="roi_end", dtype=types.FLOAT)
                images = fn.decoders.image(data, device=where, output_type=types.RGB)
                images = fn.resize(
                    images,
                    size=[h, w],
                    roi_start=start,
                    roi_end=end,
                    roi_relative=False,
                    antialias=True,
                    interp_type=types.INTERP_LINEAR,
                )
            if spec.pixel_layout == "CHW":
                images = fn.transpose(images, perm=[2, 0, 1])
            pipe.set_outputs(images)
        pipe.build()
        return pipe

    def _feed(self, pipe, batch: EncodedBatch) -> None:
        pipe.feed_input("data", batch.images())
        if self.spec.train:
            pipe.feed_input("anchor", batch.anchors)
            pipe.feed_input("shape", batch.shapes)
            pipe.feed_input("flip", batch.flips)
        else:  # (y, x): the images' dimensions in order
            start = np.ascontiguousarray(batch.anchors[:, ::-1])
            pipe.feed_input("roi_start", start)
            pipe.feed_input("roi_end", start + batch.shapes[:, ::-1])

    def submit(self, batch: EncodedBatch) -> None:
        """Start decoding ``batch`` (in DALI's threads or on the GPU); one at a time."""
        assert self._fed is None, "collect() the batch submitted before"
        self._fed = batch
        if len(batch) == 0:
            return
        if len(batch) > self.batch_size:  # the loader's buffers grew
            self.batch_size, self._pipe = len(batch), None
        if self._pipe is None:
            self._pipe = self._build()
        try:
            self._feed(self._pipe, batch)
            self._pipe.schedule_run()
        except BaseException:
            self._pipe = self._fed = None  # half fed: its next outputs would not be this batch's
            raise

    def collect(self, empty: Callable[[tuple], Any] | None = None):
        """The pixels of the batch submitted last. Raises :class:`BadImagesError` listing its
        bad images (row, DecodeError) when DALI cannot decode some of them; the pipeline is
        ready for the next batch either way. ``empty(shape)``: a uint8 CPU tensor to copy
        them into (default: a new one); not used for the GPU."""
        import torch

        batch, self._fed = self._fed, None
        if batch is None:
            raise RuntimeError("collect() without a batch submitted")
        if len(batch) == 0:
            return torch.empty((0, *self.spec.pixel_shape), dtype=torch.uint8, device=self.device)
        try:
            return self._copy_out(empty)
        except RuntimeError as e:
            self._pipe = None  # DALI: "Current pipeline object is no longer valid"
            raise BadImagesError(self._find_bad(batch, e)) from e
        except BaseException:
            # Ctrl-C while waiting: this batch's outputs may still come, and would be taken
            # for the next batch's; a new pipeline starts clean.
            self._pipe = None
            raise

    def close(self) -> None:
        """Drop what the pipeline holds (the loader is closed; a new batch builds it again)."""
        self.discard()

    def discard(self) -> None:
        """Drop the batch submitted last, if any, uncollected (a loop that stopped early)."""
        batch, self._fed = self._fed, None
        if batch is not None and len(batch) and self._pipe is not None:
            try:
                self._pipe.outputs()
            except Exception:  # a failed batch, or DALI torn down already (at exit)
                self._pipe = None

    def _copy_out(self, empty: Callable[[tuple], Any] | None):
        import torch

        pipe = self._pipe
        if pipe is None:
            raise RuntimeError("DALI's pipeline is gone before its outputs were taken")
        from nvidia.dali.plugin.pytorch.torch_utils import feed_ndarray

        if not self.gpu:
            (out,) = pipe.outputs()
            tensor = out.as_tensor()
            shape = tuple(tensor.shape())
            pixels = empty(shape) if empty is not None else torch.empty(shape, dtype=torch.uint8)
            feed_ndarray(tensor, pixels)
            return pixels
        # On a stream of its own, waited for here: the copy is done before DALI may reuse
        # its output buffer for the next batch, and the training step's stream is not waited.
        # The pixels are allocated for that stream too (memory the allocator last gave to
        # another stream may still be read there); whoever uses them on another stream
        # records it (the loader's delivery does).
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        (out,) = pipe.outputs(cuda_stream=self._stream)
        tensor = out.as_tensor()
        with torch.cuda.stream(self._stream):
            pixels = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device=self.device)
            feed_ndarray(tensor, pixels, cuda_stream=self._stream)
        self._stream.synchronize()
        return pixels

    def _find_bad(self, batch: EncodedBatch, error: BaseException) -> list:
        """The rows of ``batch`` DALI cannot decode, each with its DecodeError, found by
        decoding them one at a time (a new pipeline after each failure). If every image
        decodes on its own, the batch's failure is DALI's: a DecodeError for row 0 naming the
        batch, with DALI's message."""
        bad = []
        images = batch.images()
        for i in range(len(batch)):
            single = batch[np.array([i])]
            try:
                pipe = self._pipe = self._pipe or self._build()
                self._feed(pipe, single)
                pipe.schedule_run()  # (not run(): a pipeline keeps to one way of running)
                pipe.outputs()
            except RuntimeError as e:
                self._pipe = None
                bad.append(
                    (
                        i,
                        DecodeError(
                            f"field {self.name!r} of dataset record {int(batch.records[i])}: DALI "
                            f"could not decode its {len(images[i])}-byte image: {_dali_reason(e)}",
                            i,
                        ),
                    )
                )
        if not bad:
            raise DecodeError(
                f"DALI failed on a batch of {len(batch)} images (dataset records "
                f"{batch.records.tolist()}) although each decodes on its own: "
                f"{_dali_reason(error)}"
            ) from error
        return bad


def _dali_reason(error: BaseException) -> str:
    """The informative line of a DALI pipeline error (its text ends with boilerplate)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    lines = [
        ln
        for ln in lines
        if "no longer valid" not in ln
        and not ln.startswith(("Critical error", "File ", "encountered", "Error in"))
    ]
    return lines[-1] if lines else type(error).__name__
