"""Held-out lam selection: each direction's choice is what the sweep would choose on that half."""

from __future__ import annotations

import pytest
import torch

from csra_posthoc.errors import CSRAError
from csra_posthoc.evaluation.grid import row_scores, sweep
from csra_posthoc.evaluation.selection import half_masks, select_half, select_on_split
from csra_posthoc.metrics import mean_average_precision
from tests.helpers import make_stats, subset_stats


def test_half_masks_are_a_seeded_partition() -> None:
    a, b = half_masks(11, seed=3)
    assert int(a.sum()) == 5 and torch.equal(a, ~b)
    assert torch.equal(a, half_masks(11, seed=3)[0]) and not torch.equal(a, half_masks(11, seed=4)[0])


def test_each_direction_chooses_what_the_sweep_chooses_on_that_half() -> None:
    stats = make_stats()
    held = select_half(stats, single_label=False, seed=1)
    masks = half_masks(stats.num_images, 1)
    for (chosen_on, scored_on), choice, (mask, scores) in zip(((0, 1), (1, 0)), held.choices, held.parts, strict=True):
        on_select = sweep(subset_stats(stats, masks[chosen_on]), task="multi_label", fixed_lam=0.2)
        assert (choice.variant, choice.lam) == (on_select.best_variant.variant, on_select.best_variant.lam)
        scored = subset_stats(stats, masks[scored_on])
        on_other = sweep(scored, task="multi_label", fixed_lam=0.2)
        expected = next(r for r in on_other.rows if (r.variant, r.lam) == (choice.variant, choice.lam)).metrics["mAP"]
        assert abs(choice.score - expected) < 1e-9
        assert abs(choice.delta - (expected - on_other.baseline.metrics["mAP"])) < 1e-9
        assert torch.equal(mask, masks[scored_on])
        assert abs(mean_average_precision(scores[mask], stats.labels[mask])[0] - expected) < 1e-9
    js = held.to_json()
    assert js["select_on"] == "half" and js["seed"] == 1 and len(js["choices"]) == 2
    assert abs(js["score"] - (held.choices[0].score + held.choices[1].score) / 2) < 1e-12
    if held.agreed is None:
        assert js["lam"] is None and js["variant"] is None
    else:
        assert js["lam"] == held.choices[0].lam


def test_another_split_chooses_there_and_scores_here() -> None:
    select, evaluated = make_stats(seed=1), make_stats(seed=2)
    held = select_on_split(select, evaluated, "trainval", single_label=False)
    best = sweep(select, task="multi_label", fixed_lam=0.2).best_variant
    (choice,) = held.choices
    assert (choice.variant, choice.lam) == (best.variant, best.lam)
    expected = mean_average_precision(row_scores(evaluated, best), evaluated.labels)[0]
    assert abs(held.score - expected) < 1e-9
    assert held.to_json()["lam"] == best.lam and held.to_json()["select_on"] == "trainval"


def test_split_with_other_classes_is_refused() -> None:
    with pytest.raises(CSRAError, match="classes differ") as info:
        select_on_split(make_stats(classes=list("abcde")), make_stats(), "train", single_label=False)
    assert info.value.param == "select_on"


def test_single_label_selection_uses_top1() -> None:
    stats = make_stats()
    targets = stats.labels.float().argmax(1)
    stats.labels = torch.nn.functional.one_hot(targets, 5)
    held = select_half(stats, single_label=True, seed=0)
    mask, scores = held.parts[0]
    top1 = float((scores[mask].argmax(1) == targets[mask]).double().mean() * 100)
    assert abs(held.choices[0].score - top1) < 1e-9


def test_too_few_images_for_halves() -> None:
    with pytest.raises(CSRAError, match="at least 4 images"):
        select_half(make_stats(n=3), single_label=False)


def test_each_scoring_stage_reports_all_of_its_work_to_its_progress_bar() -> None:
    from csra_posthoc.evaluation.bootstrap import bootstrap_deltas
    from csra_posthoc.evaluation.grid import grid_rows
    from csra_posthoc.evaluation.uncertainty import assess
    from csra_posthoc.options import SweepOptions

    stats = make_stats()
    lams, temps, heads = (0.1, 0.3), (1.0, 4.0), (2,)
    seen: list[int] = []
    result = sweep(stats, task="multi_label", fixed_lam=0.2, lams=lams, temps=temps, heads=heads, progress=seen.append)
    assert sum(seen) == grid_rows(lams, temps, heads, 0.2) == 1 + 4 * 3 == len(result.rows) - 4 + 1
    seen.clear()
    select_half(stats, single_label=False, lams=lams, temps=temps, heads=heads, progress=seen.append)
    assert sum(seen) == 2 * grid_rows(lams, temps, heads)
    seen.clear()
    bootstrap_deltas(stats.avg, {"best": row_scores(stats, result.best)}, stats.labels, n=37, progress=seen.append)
    assert sum(seen) == 37
    stages: dict[str, tuple[int, int]] = {}

    class Bar:  # records each stage's total and what it was told
        def __init__(self, description: str, total: int, unit: str) -> None:
            self.description, self.total, self.done = description, total, 0

        def __enter__(self):
            return self.advance

        def advance(self, n: int) -> None:
            self.done += n

        def __exit__(self, *exc: object) -> None:
            stages[self.description] = (self.total, self.done)

    grid = SweepOptions(lams=lams, temps=temps, heads=heads, bootstrap=25)
    assess(result, stats, grid, bar=Bar)
    assert stages and all(total == done for total, done in stages.values()), stages
    assert {"bootstrap intervals", "held-out λ: choose on each half"} <= set(stages)
