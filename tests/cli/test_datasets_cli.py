"""``csra-posthoc sweep`` on each dataset's official-format fixture: protocol, transform, report, cache key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.data.fixtures import write_coco, write_image_folder, write_wider
from tests.helpers import COCO_ANNOTATIONS as ANNOTATIONS
from tests.helpers import COCO_CATEGORIES as CATEGORIES
from tests.helpers import COCO_IMAGES as IMAGES
from tests.helpers import WIDER_IMAGES, sweep_argv

runner = CliRunner()
FAST = {"lams": "0,0.2,0.5", "temps": 2, "heads": 2}


def sweep(*args: str, out: Path) -> dict:
    res = runner.invoke(app, sweep_argv(*args, dataset=None, **FAST, out=out))
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()) | {"_output": res.output}


def test_coco_sweep_and_annotation_file_in_the_cache_key(tmp_path: Path) -> None:
    write_coco(tmp_path / "coco", IMAGES, ANNOTATIONS, CATEGORIES)
    data = sweep("--dataset", "coco2014", "--data-dir", str(tmp_path / "coco"), out=tmp_path / "r.json")
    assert (data["num_images"], data["num_classes"], data["primary_metric"]) == (3, 3, "mAP")
    assert data["transform"]["kind"] == "square-resize" and "no crop" in data["_output"]
    assert any("have no annotation and were skipped" in n for n in data["data_notes"])
    ann = tmp_path / "coco" / "annotations" / "instances_val2014.json"
    # the runs below check the statistics cache only: no intervals (the first run above has them)
    again = sweep(
        "--dataset", "coco2014", "--data-dir", str(tmp_path / "coco"), "--no-bootstrap", out=tmp_path / "r.json"
    )
    assert "reused cache" in again["_output"]
    os.utime(ann, ns=(ann.stat().st_atime_ns, ann.stat().st_mtime_ns + 10**9))  # same labels, newer file
    third = sweep(
        "--dataset", "coco2014", "--data-dir", str(tmp_path / "coco"), "--no-bootstrap", out=tmp_path / "r.json"
    )
    assert "reused cache" not in third["_output"]
    kept = sweep(
        "--dataset",
        "coco2014",
        "--data-dir",
        str(tmp_path / "coco"),
        "--keep-empty",
        "--no-bootstrap",
        out=tmp_path / "r.json",
    )
    assert kept["num_images"] == 4 and "reused cache" not in kept["_output"]


def test_wider_sweep_scores_boxes_with_unknowns_negative(tmp_path: Path) -> None:
    write_wider(tmp_path / "w", WIDER_IMAGES)
    data = sweep("--dataset", "wider", "--data-dir", str(tmp_path / "w"), "--metrics", "CP,OP", out=tmp_path / "r.json")
    assert (data["num_images"], data["num_classes"]) == (3, 14)
    assert data["data_options"]["boxes"] == "clip-to-image, skip-degenerate"
    assert data["per_class_metric"] == "AP"


def test_imagenet_folder_sweep_is_single_label_with_centre_crop(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "val", {"n02124075": 2, "n07920052": 2}, size=(90, 60))
    data = sweep("--dataset", "imagenet", "--data-dir", str(tmp_path), out=tmp_path / "r.json")
    assert (data["num_images"], data["num_classes"], data["primary_metric"]) == (4, 1000, "top1")
    assert set(data["baseline"]) == {"top1", "top5"}
    assert data["transform"]["kind"] == "center-crop" and data["transform"]["resize"] == int(
        64 / data["transform"]["crop_pct"]
    )
    assert "centre crop 64" in data["_output"] and "left out of mAP" not in data["_output"]
    assert data["per_class_metric"] == "top1" and data["classes_left_out_of_mAP"] == []
    subset = sweep("--dataset", "imagenet", "--data-dir", str(tmp_path), "--max-images", "2", out=tmp_path / "r.json")
    assert subset["num_images"] == 2 and subset["data_options"]["max_images"] == 2
    assert "reused cache" not in subset["_output"] and "subset: 2 of 4" in subset["_output"]


def test_folder_class_count_mismatch_names_both_counts(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "val", {"a": 1, "b": 1, "c": 1})
    ckpt = tmp_path / "five.pth"
    torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), ckpt)
    res = runner.invoke(app, sweep_argv(img_size=None, checkpoint=ckpt, dataset="folder", data_dir=tmp_path))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "has 5 classes but folder has 3" in res.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "coco2014"], "no annotations/instances_val2014.json for --split val"),
        (["--dataset", "wider"], "no such directory (WIDER-Attribute keeps its images in Image/)"),
        (["--dataset", "imagenet"], "needs its labels"),
        (["--dataset", "coco2014", "--labels", "x.csv"], "--labels does not apply to --dataset coco2014"),
        (["--dataset", "voc2007", "--max-images", "0"], "--max-images 0: must be >= 1"),
        (["--dataset", "voc2007", "--transform", "zoom"], "--transform zoom: choose auto, square or crop"),
    ],
)
def test_bad_dataset_flags_are_one_line(tmp_path: Path, voc_dir: Path, args: list[str], message: str) -> None:
    data_dir = voc_dir if "voc2007" in args else tmp_path / "empty"
    data_dir.mkdir(exist_ok=True)
    res = runner.invoke(app, sweep_argv(*args, dataset=None, **FAST, data_dir=data_dir))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert message in res.output.replace("\n", " ")


def test_probe_fits_on_each_datasets_training_split(tmp_path: Path) -> None:
    from csra_posthoc import run_sweep
    from csra_posthoc.options import DataOptions, ExtractOptions, ModelSource, ProbeOptions, SweepOptions

    write_coco(tmp_path / "coco", IMAGES, ANNOTATIONS, CATEGORIES)
    train_images = [{"id": 1000 + k, "file_name": f"t{k}.jpg"} for k in range(6)]
    train_anns = [{"image_id": 1000 + k, "category_id": [1, 3, 90][k % 3]} for k in range(6)] + [
        {"image_id": 1000, "category_id": 3}
    ]
    write_coco(tmp_path / "coco", train_images, train_anns, CATEGORIES, split="train")
    write_wider(tmp_path / "w", WIDER_IMAGES)
    write_wider(
        tmp_path / "w",
        [{**im, "file_name": "train_" + im["file_name"].split("/")[-1]} for im in WIDER_IMAGES],
        split="trainval",
    )
    write_image_folder(tmp_path / "f" / "train", {"a": 3, "b": 3})
    write_image_folder(tmp_path / "f" / "val", {"a": 2, "b": 2})
    opts = ExtractOptions(img_size=64, use_cache=False)
    source, grid = ModelSource("test_resnet", random_init=True), SweepOptions(lams=(0, 0.2), temps=(), heads=())
    for dataset, root, n_train in (("coco2014", "coco", 6), ("wider", "w", 3), ("folder", "f", 6)):
        data = run_sweep(source, dataset, tmp_path / root, probe=ProbeOptions(), options=opts, sweep_options=grid)
        assert f"linear probe on {dataset} " in data["head"] and f", {n_train} images" in data["head"], data["head"]
    with pytest.raises(Exception, match="training split's files cannot be inferred"):
        run_sweep(source, "coco2014", tmp_path / "coco", probe=ProbeOptions(), options=opts,
                  data=DataOptions(ann_file=tmp_path / "coco" / "annotations" / "instances_val2014.json"))  # fmt: skip
