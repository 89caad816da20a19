"""Image fields decoded by NVIDIA DALI in the consumer (``ImageDecode(backend="dali")``), on
DALI's CPU backend here (the GPU test runs where CUDA is). The workers draw the same crops
and flips as for the CPU decoder, so the two backends' pixels differ only by resampling; a
bad image names its record, or is skipped within the budget with every field of its row."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import nvidia.dali  # noqa: F401  (the test extra installs it: these tests must run)
import pytest
import torch

import fastload
from fastload.decode import DecodeError

from .imagetools import BAD, BATCH, SIZE, N, assert_normalized, check_rows, jpeg, write
from .loadertools import damage

pytestmark = [pytest.mark.dali, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write(tmp_path_factory.mktemp("dali") / "ds")


@pytest.fixture(scope="module")
def with_bad(tmp_path_factory):
    return write(tmp_path_factory.mktemp("dali") / "bad", bad=BAD)


def epoch(path, backend="dali", train=True, layout="HWC", **kw) -> list[dict]:
    kw.setdefault("num_workers", 2)
    kw.setdefault("batch_size", BATCH)
    spec = fastload.ImageDecode(SIZE, train=train, layout=layout, backend=backend)
    kw.setdefault("decode", {"image": spec})
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(ds, **kw)
        return [
            {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
            for b in loader
        ]


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_dali_gives_the_cpu_decoders_crops_and_flips(images, train, layout):
    cpu = epoch(images, "cpu", train, layout, seed=4, shuffle=True)
    dali = epoch(images, "dali", train, layout, seed=4, shuffle=True)
    assert len(dali) == len(cpu) == -(-N // BATCH)
    shape = (SIZE, SIZE, 3) if layout == "HWC" else (3, SIZE, SIZE)
    width = 2 if layout == "HWC" else 3
    for a, b in zip(cpu, dali):
        assert torch.equal(a["label"], b["label"]) and a["name"] == b["name"]
        assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == shape
        diff = (a["image"].float() - b["image"].float()).abs()
        assert diff.mean() < 1.0 and diff.max() <= 6  # resampling only
        if train:  # the measure tells a flip apart: mirrored, the rows differ widely
            mirrored = (a["image"].flip(width).float() - b["image"].float()).abs()
            assert mirrored.mean() > 20
    assert sorted(check_rows(dali, layout)) == list(range(N))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normalize_and_dtype_finish_dalis_pixels(images, train, layout, dtype):
    """DALI decodes uint8 pixels; the loader's finishing pass (the CPU one here) makes them
    the normalized dtype asked for: DALI's own uint8 batches, normalized by numpy."""
    plain = epoch(images, "dali", train, layout, seed=4, shuffle=True)
    spec = fastload.ImageDecode(
        SIZE, train=train, layout=layout, backend="dali", normalize="imagenet", dtype=dtype
    )
    got = epoch(images, seed=4, shuffle=True, decode={"image": spec})
    assert len(got) == len(plain) == -(-N // BATCH)
    for a, b in zip(plain, got):
        assert torch.equal(a["label"], b["label"]) and a["name"] == b["name"]
        assert b["image"].dtype == dtype and b["image"].shape[1:] == spec.shape
        assert_normalized(b["image"], a["image"], layout)


def test_finished_dali_batches_skip_bad_images(with_bad):
    spec = fastload.ImageDecode(SIZE, backend="dali", normalize="imagenet", dtype=torch.float16)
    plain = epoch(with_bad, seed=2, bad_samples="skip", layout="CHW")
    got = epoch(with_bad, seed=2, bad_samples="skip", decode={"image": spec})
    assert [b["label"].tolist() for b in got] == [b["label"].tolist() for b in plain]
    assert sum(len(b["label"]) for b in got) == N - 1
    for a, b in zip(plain, got):
        assert_normalized(b["image"], a["image"], "CHW")


def test_encoded_images_go_in_the_slab_unless_they_do_not_fit(tmp_path):
    """Workers put a batch's encoded images end to end in the slab (room: twice a record's
    mean size each); a batch with more bytes than that sends them in its message. Both
    decode to the CPU decoder's crops. Record 20 here is ~40 times the others."""
    from fastload.decode.encoded import encoded_batch
    from fastload.format.imageinfo import EncodedImage

    images = [EncodedImage(jpeg(i), "jpeg", 60, 80) for i in range(3)]
    total = sum(len(im.data) for im in images)
    spec = fastload.ImageDecode(SIZE, train=False, backend="dali")
    room = np.zeros(total, np.uint8)
    fits = encoded_batch(images, spec, (0,), range(3), np.arange(3), into=room)
    assert fits.data is None and room.tobytes() == b"".join(im.data for im in images)
    spills = encoded_batch(images, spec, (0,), range(3), np.arange(3), into=room[:-1])
    assert spills.data == room.tobytes()

    from PIL import Image

    big = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (400, 500, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big, "JPEG", quality=98)
    with fastload.Writer(tmp_path / "ds", {"image": "image", "label": "int64"}) as w:
        for i in range(40):
            w.write({"image": big.getvalue() if i == 20 else jpeg(i), "label": i})
    got = {}
    for backend in ("cpu", "dali"):
        with fastload.Dataset(tmp_path / "ds") as ds:
            loader = fastload.DataLoader(
                ds,
                batch_size=BATCH,
                num_workers=2,
                seed=3,
                decode={"image": fastload.ImageDecode(SIZE, backend=backend)},
            )
            got[backend] = [(b["image"].clone(), b["label"].clone()) for b in loader]
            if backend == "dali":
                room = loader.layout.slots[-1]
                assert room.name == "image:encoded"
                assert BATCH * room.sample_bytes < len(big.getvalue()) + 15 * len(jpeg(0))
    for (a, la), (b, lb) in zip(got["cpu"], got["dali"]):
        assert torch.equal(la, lb)
        assert (a.float() - b.float()).abs().mean() < 1.5


def test_pixel_buffers_are_reused_only_once_their_batch_is_garbage(images):
    """On the CPU DALI's pixels are copied into buffers kept for the next batches: batches
    kept without .clone() stay intact, and a loop that drops each batch needs few buffers."""
    reference = epoch(images, seed=5, num_workers=0)  # cloned
    decode = {"image": fastload.ImageDecode(SIZE, backend="dali")}
    with fastload.Dataset(images) as ds:
        loader = fastload.DataLoader(ds, batch_size=BATCH, num_workers=0, seed=5, decode=decode)
        kept = [b["image"] for b in loader]  # every batch held at once
        buffers = loader._dali.buffers["image"]
        assert len(buffers) >= len(kept)
        for a, image in zip(reference, kept):
            assert torch.equal(a["image"], image)
        del kept, image
        grown = len(buffers)
        assert buffers.free() == grown  # every batch let go
        loader.set_epoch(0)
        for _ in range(2):
            for b in loader:
                del b
        assert len(buffers) == grown and buffers.free() == grown  # reused, none added


def test_a_mix_of_datasets(images):
    """A Mix's records through DALI: the same crops as the CPU decoder's (the slab's room for
    encoded images is sized from every dataset of the Mix)."""

    def mixed(backend):
        mix = fastload.Mix([fastload.Dataset(images), fastload.Dataset(images)], [0.5, 0.5])
        loader = fastload.DataLoader(
            mix,
            batch_size=BATCH,
            num_workers=2,
            seed=1,
            decode={"image": fastload.ImageDecode(SIZE, backend=backend)},
        )
        return [(b["image"].clone(), b["label"].clone()) for b in loader]

    cpu, dali = mixed("cpu"), mixed("dali")
    assert len(cpu) == len(dali) == -(-2 * N // BATCH)
    for (a, la), (b, lb) in zip(cpu, dali):
        assert torch.equal(la, lb) and (a.float() - b.float()).abs().mean() < 1.0


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_png_and_webp_too(tmp_path, fmt):
    from PIL import Image

    with fastload.Writer(tmp_path / "ds", {"image": "image", "label": "int64"}) as w:
        for i in range(20):
            picture = Image.open(io.BytesIO(jpeg(i)))
            f = io.BytesIO()
            picture.save(f, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
            w.write({"image": f.getvalue(), "label": i})
    cpu = epoch(tmp_path / "ds", "cpu", seed=2, shuffle=True)
    dali = epoch(tmp_path / "ds", "dali", seed=2, shuffle=True)
    for a, b in zip(cpu, dali):
        assert torch.equal(a["label"], b["label"])
        assert (a["image"].float() - b["image"].float()).abs().mean() < 1.0


@pytest.mark.parametrize("num_workers,worker_type", [(0, "process"), (2, "thread"), (3, "process")])
def test_workers_do_not_change_dalis_pixels(images, num_workers, worker_type):
    reference = epoch(images, seed=1, shuffle=True)
    got = epoch(images, seed=1, shuffle=True, num_workers=num_workers, worker_type=worker_type)
    assert len(got) == len(reference)
    for a, b in zip(reference, got):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_torch_order_and_loader_stats(images):
    gen = torch.Generator().manual_seed(9)
    with fastload.Dataset(images) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=BATCH,
            shuffle=True,
            generator=gen,
            num_workers=2,
            decode={"image": fastload.ImageDecode(SIZE, backend="dali", dali_threads=1)},
        )
        order = [
            int(i)
            for b in torch.utils.data.DataLoader(
                range(N), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(9)
            )
            for i in b
        ]
        got = [
            {"image": b["image"].clone(), "label": b["label"].clone(), "name": b["name"]}
            for b in loader
        ]
        assert check_rows(got) == order
        stats = loader.stats()
    assert stats["samples"] == N and stats["batches"] == len(got)
    assert stats["stage_seconds"]["decode"] > 0


def test_a_bad_image_names_its_record(with_bad):
    with fastload.Dataset(with_bad) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=BATCH,
            num_workers=2,
            decode={"image": fastload.ImageDecode(SIZE, backend="dali")},
        )
        for _ in range(2):  # the pipeline is made again: the second epoch fails the same way
            seen = []
            with pytest.raises(
                DecodeError, match=f"dataset record {BAD}: DALI could not decode its 300-byte image"
            ):
                for b in loader:
                    seen += b["label"].tolist()
            assert seen == list(range(BAD // BATCH * BATCH))  # the batches before it came


def test_bad_images_are_skipped_with_their_rows(with_bad):
    got = epoch(with_bad, seed=2, shuffle=True, bad_samples="skip")
    labels = check_rows(got)
    assert sorted(labels) == [i for i in range(N) if i != BAD]
    assert sum(len(b["label"]) for b in got) == N - 1
    with fastload.Dataset(with_bad) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=BATCH,
            num_workers=0,
            seed=2,
            shuffle=True,
            bad_samples="skip",
            decode={"image": fastload.ImageDecode(SIZE, backend="dali")},
        )
        again = [b["label"].clone() for b in loader]
        stats, state = loader.stats(), loader.state_dict()
    assert [b["label"].tolist() for b in got] == [b.tolist() for b in again]
    assert stats["skipped_samples"] == 1 and stats["samples"] == N - 1
    assert state["bad_samples"]["skipped"] == 1 and state["bad_samples"]["seen"] == N


def test_records_failing_their_checksum_and_bad_images_together(images, tmp_path):
    """Records the workers drop (checksum) and images DALI cannot decode, in one batch and
    apart: each row goes with every field, the rest decode with the crops they get when
    nothing is bad, and the budget counts both kinds."""
    plain = write(tmp_path / "plain", bad=BAD, compression="none")  # records at known bytes
    both = damage(plain, tmp_path / "both", records=(33, 36, 60))
    want = {
        int(label): img
        for b in epoch(images, seed=2, shuffle=False)
        for label, img in zip(b["label"], b["image"])
    }
    with fastload.Dataset(both) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=BATCH,
            num_workers=2,
            seed=2,
            shuffle=False,
            bad_samples=fastload.SkipBadSamples(max_fraction=0.1),
            decode={"image": fastload.ImageDecode(SIZE, backend="dali")},
        )
        got = [
            {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
            for b in loader
        ]
        stats, state = loader.stats(), loader.state_dict()
    skipped = {33, 36, BAD, 60}
    assert check_rows(got) == [i for i in range(N) if i not in skipped]
    assert [len(b["label"]) for b in got] == [16, 16, 13, 15, 6]
    for b in got:
        for label, img in zip(b["label"].tolist(), b["image"]):
            assert torch.equal(img, want[label]), label
    assert stats["skipped_samples"] == 4 and stats["samples"] == N - 4
    assert state["bad_samples"] == {"rank": 0, "seen": N, "skipped": 4}


def test_skip_budget_still_raises_when_spent(with_bad):
    policy = fastload.SkipBadSamples(max_fraction=0.0, probation=0)
    with pytest.raises(fastload.errors.TooManyBadSamplesError, match=f"record {BAD}"):
        epoch(with_bad, bad_samples=policy)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resuming_mid_epoch_gives_the_same_tail(images, num_workers):
    """DALI decodes a batch ahead: state_dict counts the batches handed out, not that one."""
    decode = {"image": fastload.ImageDecode(SIZE, backend="dali")}
    with fastload.Dataset(images) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=BATCH, num_workers=num_workers, seed=7, shuffle=True, decode=decode
        )
        whole = [(b["image"].clone(), b["label"].clone()) for b in loader]
        loader.set_epoch(0)
        it = iter(loader)
        for _ in range(2):
            next(it)
        state = loader.state_dict()
        del it
        fresh = fastload.DataLoader(
            ds, batch_size=BATCH, num_workers=2, seed=7, shuffle=True, decode=decode
        )
        fresh.load_state_dict(state)
        tail = [(b["image"].clone(), b["label"].clone()) for b in fresh]
    assert len(tail) == len(whole) - 2
    for (a, la), (b, lb) in zip(whole[2:], tail):
        assert torch.equal(la, lb) and torch.equal(a, b)


def test_resuming_out_of_order_repeats_and_loses_nothing(images):
    """in_order=False: the batch DALI holds back is not counted as handed out either."""
    decode = {"image": fastload.ImageDecode(SIZE, backend="dali")}
    with fastload.Dataset(images) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=BATCH, num_workers=2, seed=7, shuffle=True, in_order=False, decode=decode
        )
        it = iter(loader)
        first = [next(it)["label"].clone() for _ in range(2)]
        state = loader.state_dict()
        del it
        fresh = fastload.DataLoader(
            ds, batch_size=BATCH, num_workers=2, seed=7, shuffle=True, in_order=False, decode=decode
        )
        fresh.load_state_dict(state)
        rest = [b for b in fresh]
    labels = [int(i) for b in first for i in b] + check_rows(rest)
    assert sorted(labels) == list(range(N))


def test_leaving_an_epoch_early_then_a_whole_one(images, no_leaks):
    decode = {"image": fastload.ImageDecode(SIZE, backend="dali")}
    with fastload.Dataset(images) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=BATCH, num_workers=2, decode=decode, persistent_workers=True
        )
        for _ in range(2):
            it = iter(loader)
            next(it)
            del it  # a batch was in the pipeline
        labels = [int(i) for b in loader for i in b["label"]]
        loader.close()
    assert labels == list(range(N))


@pytest.mark.parametrize("after", [0.01, 0.03, 0.07])
def test_an_interrupt_while_decoding_leaves_the_next_epoch_right(images, after):
    """Ctrl-C lands in the training loop, most likely while the consumer waits on DALI (the
    decode is nearly all its time here): the loader, iterated again, gives each batch its
    own images, not the outputs of a batch fed before the interrupt."""
    import _thread
    import threading

    decode = {"image": fastload.ImageDecode(SIZE, backend="dali")}
    reference = epoch(images, seed=6, num_workers=0, batch_size=4)
    with fastload.Dataset(images) as ds:
        loader = fastload.DataLoader(ds, batch_size=4, num_workers=0, seed=6, decode=decode)
        timer = threading.Timer(after, _thread.interrupt_main)
        with pytest.raises(KeyboardInterrupt):
            timer.start()
            for _ in range(3):
                for _ in loader:
                    pass
            timer.join()  # (not reached if the interrupt came first)
            raise KeyboardInterrupt  # came after the loops: still a valid run
        loader.set_epoch(0)
        again = [(b["image"].clone(), b["label"].clone()) for b in loader]
    assert len(again) == len(reference)
    for a, (image, label) in zip(reference, again):
        assert torch.equal(a["label"], label) and torch.equal(a["image"], image)


def test_argument_errors(images):
    with pytest.raises(ValueError, match="backend must be one of"):
        fastload.ImageDecode(SIZE, backend="gpu")
    with pytest.raises(ValueError, match="dali_threads"):
        fastload.ImageDecode(SIZE, dali_threads=2)
    with pytest.raises(ValueError, match="eval center crop is square"):
        fastload.ImageDecode((32, 48), train=False, backend="dali")
    with fastload.Dataset(images) as ds, pytest.raises(ValueError, match="transform"):
        fastload.DataLoader(
            ds,
            batch_size=4,
            transform=lambda s: s,
            decode={"image": fastload.ImageDecode(SIZE, backend="dali")},
        )


def test_without_dali_installed_the_error_says_what_to_install(images):
    code = (
        "import sys; sys.modules['nvidia.dali'] = None\n"
        "import fastload\n"
        f"ds = fastload.Dataset({str(images)!r})\n"
        "try:\n"
        "    fastload.DataLoader(ds, batch_size=4, decode={'image': "
        "fastload.ImageDecode(8, backend='dali')})\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ImportError: ImageDecode(backend='dali') needs NVIDIA DALI" in out.stdout, out.stderr
    assert "fastload[dali]" in out.stdout


@pytest.mark.cuda
def test_dali_on_the_gpu_gives_the_cpu_decoders_crops(images):
    cpu = epoch(images, "cpu", seed=4, shuffle=True)
    gpu = epoch(images, "dali", seed=4, shuffle=True, device="cuda")
    for a, b in zip(cpu, gpu):
        assert b["image"].is_cuda and b["label"].is_cuda
        assert torch.equal(a["label"], b["label"].cpu())
        diff = (a["image"].float() - b["image"].cpu().float()).abs()
        assert diff.mean() < 1.5


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_dali_on_the_gpu_finished_as_the_cpu_finishes_its_pixels(images, layout):
    """DALI's mixed decoder, then the finishing kernel on the loader's copy stream: its
    uint8 batches, normalized on the CPU, are its bf16 batches."""
    plain = epoch(images, seed=4, shuffle=True, layout=layout, device="cuda")
    spec = fastload.ImageDecode(
        SIZE, backend="dali", layout=layout, normalize="imagenet", dtype=torch.bfloat16
    )
    got = epoch(images, seed=4, shuffle=True, decode={"image": spec}, device="cuda")
    torch.cuda.synchronize()
    assert len(got) == len(plain) == -(-N // BATCH)
    for a, b in zip(plain, got):
        assert b["image"].is_cuda and b["image"].dtype == torch.bfloat16
        assert torch.equal(a["label"], b["label"])
        assert_normalized(b["image"].cpu(), a["image"].cpu(), layout)


@pytest.mark.cuda
def test_dali_on_the_gpu_eval_and_skip(with_bad):
    spec = fastload.ImageDecode(SIZE, train=False, backend="dali", dtype=torch.float16)
    got = epoch(with_bad, seed=2, bad_samples="skip", decode={"image": spec}, device="cuda")
    labels = torch.cat([b["label"].cpu() for b in got]).tolist()
    assert sorted(labels) == [i for i in range(N) if i != BAD]
    cpu = epoch(with_bad, "cpu", train=False, layout="CHW", seed=2, bad_samples="skip")
    for a, b in zip(cpu, got, strict=True):
        assert torch.equal(a["label"], b["label"].cpu())
        diff = (a["image"].float() / 255 - b["image"].cpu().float()).abs()
        assert diff.mean() < 0.01  # x / 255 in [0, 1]; resampling differs a little
