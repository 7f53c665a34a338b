"""--max-images: seeded, reproducible, stratified, and part of the cache key."""

from __future__ import annotations

from pathlib import Path

import torch

from csra_posthoc import load_dataset
from csra_posthoc.data.fixtures import random_voc_annotations, write_voc
from csra_posthoc.data.subset import stratified_indices


def test_multilabel_subset_keeps_a_positive_of_every_class() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = (torch.rand(500, 12, generator=gen) < 0.3).to(torch.int8)
    labels[:, 11] = 0
    labels[[17, 301], 11] = 1  # a rare class: random 10% subsets usually miss it
    for seed in range(5):
        keep = stratified_indices(labels, 12, seed)
        assert len(keep) == len(set(keep)) == 12 and keep == sorted(keep)
        assert bool((labels[keep] == 1).any(0).all())
        assert keep == stratified_indices(labels, 12, seed)  # reproducible
    assert stratified_indices(labels, 12, 0) != stratified_indices(labels, 12, 1)


def test_single_label_subset_keeps_class_shares() -> None:
    targets = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    labels = torch.nn.functional.one_hot(targets).to(torch.int8)
    keep = stratified_indices(labels, 20, seed=3, single_label=True)
    counts = torch.bincount(targets[keep], minlength=3).tolist()
    assert len(keep) == 20 and all(abs(c - e) <= 1 for c, e in zip(counts, [12, 6, 2], strict=True))


def test_subset_changes_the_fingerprint_and_the_report(tmp_path: Path) -> None:
    write_voc(tmp_path, random_voc_annotations(40))
    full = load_dataset("voc2007", tmp_path)
    small = load_dataset("voc2007", tmp_path, max_images=25)
    again = load_dataset("voc2007", tmp_path, max_images=25)
    other_seed = load_dataset("voc2007", tmp_path, max_images=25, subset_seed=1)
    assert len(small) == 25 and small.ids == again.ids and set(small.ids) <= set(full.ids)
    assert bool((small.labels == 1).any(0).all())  # all 20 VOC classes keep a positive
    assert small.options["max_images"] == 25 and small.options["subset_of"] == 40
    assert len({full.fingerprint(), small.fingerprint(), other_seed.fingerprint()}) == 3
    assert small.fingerprint() == again.fingerprint()
    assert any("subset: 25 of 40 samples" in n for n in small.notes)
    assert load_dataset("voc2007", tmp_path, max_images=99).ids == full.ids
