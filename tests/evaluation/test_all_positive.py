"""A class positive in every image scores AP 100 whatever the scores: reported, with mAP without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.data.fixtures import random_voc_annotations, write_voc
from tests.helpers import sweep_argv

runner = CliRunner()


def test_class_positive_everywhere_is_noted_and_excluded_from_the_extra_map(tmp_path: Path) -> None:
    annotations = random_voc_annotations(24)
    for objects in annotations.values():
        if ("person", 0) not in objects:
            objects.append(("person", 0))
    write_voc(tmp_path / "data", annotations)
    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    res = runner.invoke(
        app,
        sweep_argv(data_dir=tmp_path / "data", lams="0,0.5", temps="", heads="", out=out, save_scores=npz),
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["classes_all_positive"] == ["person"]
    arrays = np.load(npz, allow_pickle=False)
    classes = list(arrays["classes"])
    for name in ("baseline", "best", "fixed"):
        aps = {}
        for c, cls in enumerate(classes):
            keep = arrays["labels"][:, c] != -1
            y = arrays["labels"][keep, c]
            if y.sum():
                aps[cls] = average_precision_score(y, arrays[name][keep, c])
        assert abs(aps["person"] - 1.0) < 1e-12  # whatever the scores
        without = np.mean([v for k, v in aps.items() if k != "person"]) * 100
        assert abs(without - data["mAP_without_all_positive"][name]) < 1e-4
    assert abs(np.mean(list(aps.values())) * 100 - data["fixed"]["metrics"]["mAP"]) < 1e-4  # person stays in the mean
    note = [ln for ln in res.output.splitlines() if "positive in every image" in ln]
    assert len(note) == 1 and "(AP is 100 whatever the scores): person; mAP without them: baseline " in note[0]
    assert f"{data['mAP_without_all_positive']['baseline']:.2f}" in note[0]


def test_no_note_without_such_class(voc_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = runner.invoke(
        app,
        sweep_argv(data_dir=voc_dir, lams=0, temps="", heads="", out=out),
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["classes_all_positive"] == [] and data["mAP_without_all_positive"] is None
    assert "positive in every image" not in res.output
