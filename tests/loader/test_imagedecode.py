"""ImageDecode's and TokenDecode's arguments, checked when they are made (and against the
dataset's fields when a loader lays out its batches), each refusal a clear error."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastload
from fastload.decode import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.timeout(120)


def test_defaults_are_the_uint8_pixels_of_before():
    spec = fastload.ImageDecode(224)
    assert (spec.size, spec.train, spec.dtype, spec.layout, spec.backend) == (
        224,
        True,
        torch.uint8,
        "HWC",
        "cpu",
    )
    assert spec.scale == (0.08, 1.0) and spec.ratio == (3 / 4, 4 / 3)
    assert spec.normalize is None and not spec.finished
    assert spec.shape == spec.pixel_shape == (224, 224, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_float_dtype_gives_chw_by_default_and_hwc_when_asked(dtype):
    spec = fastload.ImageDecode(32, dtype=dtype, normalize="imagenet")
    assert spec.finished and spec.layout == "CHW" and spec.shape == (3, 32, 32)
    assert spec.pixel_layout == "HWC" and spec.pixel_shape == (32, 32, 3)
    assert spec.mean_std == (IMAGENET_MEAN, IMAGENET_STD)
    hwc = fastload.ImageDecode((32, 48), dtype=dtype, layout="HWC")
    assert hwc.shape == (32, 48, 3) and hwc.mean_std == ((0.0,) * 3, (1.0,) * 3)
    assert fastload.ImageDecode(32, layout="CHW").pixel_shape == (3, 32, 32)  # uint8 CHW


def test_specs_are_values_a_worker_gets_as_they_are():
    spec = fastload.ImageDecode(
        48,
        train=False,
        scale=[0.2, 0.9],
        ratio=(1, 2),
        normalize=([0.5, 0.5, 0.5], np.array([0.25, 0.25, 0.25])),
        dtype=torch.float16,
    )
    assert spec.scale == (0.2, 0.9) and spec.ratio == (1.0, 2.0)
    assert spec.normalize == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    same = fastload.ImageDecode(
        48,
        train=False,
        scale=(0.2, 0.9),
        ratio=(1.0, 2.0),
        normalize=((0.5,) * 3, (0.25,) * 3),
        dtype=torch.float16,
    )
    assert spec == same and hash(spec) == hash(same)
    assert pickle.loads(pickle.dumps(spec)) == spec
    with pytest.raises(AttributeError):
        spec.dtype = torch.float32  # frozen


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        fastload.ImageDecode(224, True)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"size": 0}, ValueError, "size must be positive"),
        ({"size": (32, -1)}, ValueError, "positive ints"),
        ({"size": "224"}, ValueError, "int or an"),
        ({"size": (32, 48), "train": False}, ValueError, "eval center crop is square"),
        ({"train": 1}, TypeError, "train must be True or False"),
        ({"dtype": torch.int32}, TypeError, "dtype must be torch.uint8"),
        ({"dtype": np.float32}, TypeError, "dtype must be torch.uint8"),
        ({"normalize": "imagenet"}, ValueError, "normalize= gives float values"),
        ({"normalize": "cifar", "dtype": torch.float32}, ValueError, "'imagenet'"),
        (
            {"normalize": ((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)), "dtype": torch.float32},
            ValueError,
            "0..255-scale",
        ),
        ({"normalize": ((0.5,) * 2, (0.2,) * 2), "dtype": torch.float32}, ValueError, "channel"),
        ({"layout": "NCHW"}, ValueError, "layout must be one of"),
        ({"backend": "gpu"}, ValueError, "backend must be one of"),
        ({"dali_threads": 2}, ValueError, "dali_threads"),
        ({"scale": (0.9, 0.1)}, ValueError, "scale"),
        ({"ratio": (0.0, 1.0)}, ValueError, "ratio"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, error, match):
    kwargs = {"size": 32, **kwargs}
    with pytest.raises(error, match=match):
        fastload.ImageDecode(kwargs.pop("size"), **kwargs)


@pytest.mark.parametrize(
    "module,backend", [("nvidia.nvimgcodec", "nvimgcodec"), ("nvidia.dali", "dali")]
)
def test_a_missing_library_is_an_import_error_when_the_spec_is_made(module, backend):
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "import fastload\n"
        "try:\n"
        f"    fastload.ImageDecode(8, backend={backend!r})\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("ImportError:"), out.stderr
    assert f"backend='{backend}'" in out.stdout and "needs NVIDIA" in out.stdout
    assert f"pip install 'fastload[{backend}]'" in out.stdout


def test_token_decode_is_at_the_top_level_and_checks_its_arguments():
    assert fastload.TokenDecode is fastload.decode.TokenDecode
    spec = fastload.TokenDecode(dtype=torch.int32, shift=False)
    assert spec.out_length(5) == 5 and fastload.TokenDecode().out_length(5) == 4
    with pytest.raises(ValueError, match="int64 or torch.int32"):
        fastload.TokenDecode(dtype=torch.float32)
    with pytest.raises(ValueError, match="shift must be a bool"):
        fastload.TokenDecode(shift=1)


# ------------------------------------------------------------------ against the dataset


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    import io

    from PIL import Image

    path = tmp_path_factory.mktemp("specs") / "ds"
    schema = {
        "image": "image",
        "label": "int64",
        "tokens": "uint16[9]",
        "wide": "uint32[9]",
        "one": "uint16[1]",
        "grid": "uint16[3,3]",
        "var": "uint16[?]",
        "floats": "float32[9]",
    }
    f = io.BytesIO()
    Image.new("RGB", (20, 16), (10, 20, 30)).save(f, "JPEG")
    with fastload.Writer(path, schema) as w:
        for i in range(4):
            w.write(
                {
                    "image": f.getvalue(),
                    "label": i,
                    "tokens": np.arange(9, dtype=np.uint16),
                    "wide": np.arange(9, dtype=np.uint32),
                    "one": np.zeros(1, np.uint16),
                    "grid": np.zeros((3, 3), np.uint16),
                    "var": np.arange(i + 1, dtype=np.uint16),
                    "floats": np.zeros(9, np.float32),
                }
            )
    return path


@pytest.mark.parametrize(
    "decode,error,match",
    [
        ({"label": fastload.ImageDecode(8)}, ValueError, "not an image field"),
        ({"nope": fastload.ImageDecode(8)}, ValueError, "no field 'nope'"),
        ({"image": fastload.TokenDecode()}, ValueError, "fixed-length row of tokens"),
        ({"grid": fastload.TokenDecode()}, ValueError, "uint16\\[3,3\\]"),
        ({"var": fastload.TokenDecode()}, ValueError, "uint16\\[\\?\\]"),
        ({"floats": fastload.TokenDecode()}, ValueError, "uint16 or uint32 tokens"),
        ({"wide": fastload.TokenDecode(dtype=torch.int32)}, ValueError, "would wrap"),
        ({"one": fastload.TokenDecode()}, ValueError, "at least 2 tokens"),
        ({"image": "imagenet"}, TypeError, "ImageDecode .*or a TokenDecode"),
    ],
)
def test_specs_that_do_not_fit_their_field_are_refused_by_the_loader(mixed, decode, error, match):
    with fastload.Dataset(mixed) as ds, pytest.raises(error, match=match):
        fastload.DataLoader(ds, batch_size=2, decode=decode)


def test_finishing_and_a_transform_do_not_combine(mixed):
    finished = fastload.ImageDecode(8, dtype=torch.float32)
    with fastload.Dataset(mixed) as ds:
        for decode in ({"image": finished}, {"tokens": fastload.TokenDecode()}):
            with pytest.raises(ValueError, match="transform= cannot be combined"):
                fastload.DataLoader(ds, batch_size=2, decode=decode, transform=lambda s: s)
        with pytest.raises(ValueError, match="in both decode= and variable="):
            fastload.DataLoader(
                ds,
                batch_size=2,
                decode={"var": fastload.TokenDecode()},
                variable={"var": fastload.Pad(length=4)},
            )
        # uint8 pixels and a transform still go together, as before
        loader = fastload.DataLoader(
            ds,
            batch_size=2,
            decode={"image": fastload.ImageDecode(8)},
            transform=lambda s: {"m": float(s["image"].mean())},
        )
        assert len(next(iter(loader))["m"]) == 2
