"""Linear probe: the fitted head equals scikit-learn's decision function, caching, and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from csra_posthoc import CSRAError, ExtractOptions, extract, load_dataset, load_model
from csra_posthoc.data.fixtures import random_voc_annotations, write_voc
from csra_posthoc.evaluation.run import load_training_split
from csra_posthoc.extraction.probe import fit_linear_probe, fit_probe
from csra_posthoc.heads.head_file import load_head


def test_fit_linear_probe_folds_standardisation_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(120, 6, generator=g) * torch.tensor([1.0, 5.0, 0.1, 2.0, 3.0, 1.0]) + 4.0
    labels = torch.stack([(feats[:, 0] > 4).long(), (feats[:, 1] + feats[:, 2] > 4).long(), torch.zeros(120).long()], 1)
    labels[:10, 0] = -1
    weight, bias, skipped = fit_linear_probe(feats, labels, c=0.5)
    assert skipped == [2] and torch.all(weight[2] == 0) and bias[2] < 0  # never positive -> predicts negative
    x = feats.double().numpy()
    z = (x - x.mean(0)) / x.std(0)
    keep = labels[:, 0].numpy() != -1
    ref = LogisticRegression(C=0.5, max_iter=2000).fit(z[keep], labels[keep, 0].numpy())
    ours = (feats @ weight[0] + bias[0]).numpy()
    np.testing.assert_allclose(ours, ref.decision_function(z), atol=1e-4)


@pytest.fixture
def split_voc(tmp_path: Path) -> Path:
    annotations = random_voc_annotations(40, seed=1)
    ids = list(annotations)
    write_voc(tmp_path, {i: annotations[i] for i in ids[:20]}, split="test")
    write_voc(tmp_path, {i: annotations[i] for i in ids[20:]}, split="trainval", seed=1)
    return tmp_path


def test_probe_head_identity_cache_and_saved_head(split_voc: Path, isolated_cache: Path, tmp_path: Path) -> None:
    test = load_dataset("voc2007", split_voc)
    train = load_training_split("voc2007", split_voc, None, None, test)
    assert train.split == "trainval" and len(train) == 20
    base = load_model("test_resnet", random_init=True)  # 1000 classes: probe replaces the head
    adapter = fit_probe(base, train, options=ExtractOptions(img_size=64), save_head_to=tmp_path / "head.safetensors")
    assert adapter.num_classes == 20 and "probe on voc2007 trainval, 20 images" in adapter.info.head
    stats = extract(adapter, test, img_size=64)
    assert stats.info.identity_max_abs_diff < 1e-4  # probe logits on pooled features == mean of its location scores
    head, meta = load_head(tmp_path / "head.safetensors")
    assert torch.equal(head.weight, adapter.head.weight) and meta["probe"]["num_images"] == 20
    again = fit_probe(base, train, options=ExtractOptions(img_size=64))  # cached
    assert torch.equal(again.head.weight, adapter.head.weight)
    assert len(list(isolated_cache.glob("probe-*.safetensors"))) == 1


def test_probe_errors(split_voc: Path, voc_dir: Path) -> None:
    test = load_dataset("voc2007", voc_dir)  # this fixture has no trainval.txt
    with pytest.raises(CSRAError, match="head='probe' needs a training split: split trainval"):
        load_training_split("voc2007", voc_dir, None, None, test)
    with pytest.raises(CSRAError, match="train_labels=FILE.csv"):
        load_training_split("csv", voc_dir, None, None, test)
    base = load_model("test_resnet", random_init=True)
    with pytest.raises(CSRAError, match="c 0.0: the probe's inverse L2 strength must be > 0"):
        fit_probe(base, test, c=0.0)
    with torch.no_grad():
        base.model.layer4[0].conv1.weight.fill_(float("nan"))
    with pytest.raises(CSRAError, match="NaN/inf features at input size 64"):
        fit_probe(
            base,
            load_training_split("voc2007", split_voc, None, None, load_dataset("voc2007", split_voc)),
            options=ExtractOptions(img_size=64, use_cache=False),
        )


def test_unfitted_probe_classes_reach_the_notes(split_voc: Path) -> None:
    test = load_dataset("voc2007", split_voc)
    train = load_training_split("voc2007", split_voc, None, None, test)
    train.labels[:, 3] = 0  # no positive for the 4th class in training
    adapter = fit_probe(load_model("test_resnet", random_init=True), train, options=ExtractOptions(img_size=64))
    assert any(train.classes[3] in note and "not fitted" in note for note in adapter.info.notes)


def test_probe_refuses_training_on_evaluated_images(split_voc: Path) -> None:
    test = load_dataset("voc2007", split_voc)
    with pytest.raises(CSRAError, match="20 samples are in both the training split \\(test\\)"):
        load_training_split("voc2007", split_voc, "test", None, test)
