"""CPU image decode and augmentation straight into a preallocated uint8 batch.

The loader's workers call :func:`decode_batch_into` with a batch of encoded images (JPEG,
PNG, WebP) and a view of a shared-memory buffer; each image is decoded, cropped
(RandomResizedCrop + flip for training, resize/center-crop for eval), resized with
antialiased bilinear and written in place, HWC or CHW.

The fast part is decoding less: JPEGs are decoded at a 1/2, 1/4 or 1/8 DCT scale whenever the
crop still covers the output at that scale, Pillow's decoder stops at the crop's last row,
and the resize writes directly into the output. See ``benchmarks/decode.py`` for numbers.

Modules: ``params`` (crop parameters), ``decoders`` (encoded bytes to pixels), ``resize``
(crop, resize, flip into ``out``), ``crop`` (one image), ``batch`` (a batch), ``errors``,
``scratch`` (per-thread buffers), ``finish`` (uint8 images to normalized float/bf16 NCHW,
token rows to int64 with the next-token shift, on the CPU or a CUDA device); ``dali`` and
``nvimgcodec``: the same crops decoded by NVIDIA DALI or nvImageCodec instead (on the GPU, or
their CPU backends; imported only when used), from the ``encoded`` batches the loader's
workers send them.
"""

from .batch import decode_batch_into, draw_batch_params, image_rngs, warm_up
from .crop import decode_center_crop_into, decode_crop_into
from .decoders import available_jpeg_backends, dct_scale, default_jpeg_backend
from .errors import DecodeError
from .finish import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TokenDecode,
    finish_images,
    finish_tokens,
    resolve_normalize,
)
from .params import (
    DEFAULT_RATIO,
    DEFAULT_SCALE,
    EVAL_CROP_RATIO,
    Crop,
    ImageRng,
    center_crop_params,
    check_scale_ratio,
    eval_resize_size,
    random_resized_crop_params,
)
from .resize import available_resize_backends, default_resize_backend

__all__ = [
    "decode_batch_into",
    "decode_crop_into",
    "decode_center_crop_into",
    "draw_batch_params",
    "image_rngs",
    "warm_up",
    "DecodeError",
    "finish_images",
    "finish_tokens",
    "resolve_normalize",
    "TokenDecode",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Crop",
    "ImageRng",
    "random_resized_crop_params",
    "center_crop_params",
    "check_scale_ratio",
    "eval_resize_size",
    "dct_scale",
    "available_jpeg_backends",
    "default_jpeg_backend",
    "available_resize_backends",
    "default_resize_backend",
    "DEFAULT_SCALE",
    "DEFAULT_RATIO",
    "EVAL_CROP_RATIO",
]
