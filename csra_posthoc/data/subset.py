"""``--max-images N``: a seeded, reproducible, stratified subset for quick runs."""

from __future__ import annotations

from dataclasses import replace

import torch

from .base import LabelledImages


def stratified_indices(labels: torch.Tensor, n: int, seed: int = 0, single_label: bool = False) -> list[int]:
    """``n`` sample indices (sorted). Single-label: every class keeps its share (systematic
    sampling on each class's seeded order). Multi-label: first one positive of each class, rarest
    class first, then a seeded random fill; so every class keeps a positive where ``n`` allows."""
    total = labels.shape[0]
    if n >= total:
        return list(range(total))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(total, generator=gen)
    if single_label:
        target = labels.argmax(1)[order]
        key = torch.empty(total, dtype=torch.float64)
        for c in target.unique():
            members = (target == c).nonzero().flatten()
            # the r-th member of a class of size m sits at quantile (r + u) / m: equal shares per class
            key[members] = (
                torch.arange(len(members), dtype=torch.float64) + torch.rand(1, generator=gen, dtype=torch.float64)
            ) / len(members)
        picked = order[key.argsort(stable=True)[:n]]
        return sorted(picked.tolist())
    positive = labels[order] == 1
    chosen: list[int] = []
    taken = torch.zeros(total, dtype=torch.bool)
    covered = torch.zeros(labels.shape[1], dtype=torch.bool)
    for c in positive.sum(0).argsort(stable=True).tolist():
        if len(chosen) == n:
            break
        if covered[c] or not positive[:, c].any():
            continue
        pick = int(positive[:, c].nonzero()[0])
        chosen.append(pick)
        taken[pick] = True
        covered |= positive[pick]
    chosen += (~taken).nonzero().flatten()[: n - len(chosen)].tolist()
    return sorted(order[chosen].tolist())


def subset(images: LabelledImages, max_images: int, seed: int = 0) -> LabelledImages:
    """At most ``max_images`` samples of ``images``; N, the seed and the total go into the cache key."""
    if max_images >= len(images):
        return replace(images, notes=[*images.notes, f"--max-images {max_images}: all {len(images)} samples kept"])
    keep = stratified_indices(images.labels, max_images, seed, images.single_label)
    return replace(
        images,
        ids=[images.ids[i] for i in keep],
        paths=[images.paths[i] for i in keep],
        labels=images.labels[keep],
        boxes=[images.boxes[i] for i in keep] if images.boxes is not None else None,
        object_boxes=[images.object_boxes[i] for i in keep] if images.object_boxes is not None else None,
        image_sizes=[images.image_sizes[i] for i in keep] if images.image_sizes is not None else None,
        options={**images.options, "max_images": max_images, "subset_seed": seed, "subset_of": len(images)},
        notes=[
            *images.notes,
            f"subset: {len(keep)} of {len(images)} samples (--max-images {max_images}, seed {seed}, stratified)",
        ],
    )
