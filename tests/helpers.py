"""What many test modules share: the one-line-error check, statistics builders, results-file and
dataset-fixture writers, and ``sweep_argv`` (the tiny sweep every CLI test starts from).

Test modules import from here and from ``csra_posthoc``, never from each other; pytest fixtures
live in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csra_posthoc.data import load_rgb
from csra_posthoc.data.transforms import build_transform
from csra_posthoc.defaults import CACHED_TEMPERATURES
from csra_posthoc.evaluation.grid import paper_fixed_lam, sweep
from csra_posthoc.extraction.statistics import ClassStatistics, StatisticsInfo
from csra_posthoc.heads.scoring import location_statistics
from csra_posthoc.report.tables import results_dict

ROOT = Path(__file__).resolve().parents[1]


def readme_patch_example() -> str:
    """README's patched-model example (the first Python block of "## Patched models")."""
    section = (ROOT / "README.md").read_text().split("## Patched models", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


# -- the CLI --------------------------------------------------------------------------------------

SWEEP_DEFAULTS: dict[str, Any] = {
    "model": "test_resnet",
    "random_init": True,
    "dataset": "voc2007",
    "img_size": 64,
    "lams": "0,0.1,0.5",
    "temps": "1,4",
    "heads": "1,4",
}
WEIGHT_SOURCES = ("random_init", "pretrained", "checkpoint")


def apply_argv(model: str, results: str | Path, out: str | Path, *extra: str, pick: str | None = "fixed") -> list[str]:
    """``csra-posthoc apply`` from a sweep's results file: ``--model M --from-results R --pick P --out O``
    and ``extra`` (the weight source, overrides); ``pick=None`` leaves ``--pick`` at its default."""
    argv = ["apply", "--model", model, *extra, "--from-results", str(results), "--out", str(out)]
    return argv if pick is None else [*argv, "--pick", pick]


def exported_inputs(preprocessing: Any, paths: Any) -> torch.Tensor:
    """Images as an exported file's own preprocessing (its config's transform) turns them into a batch."""
    transform = build_transform(preprocessing)
    return torch.stack([transform(load_rgb(p)) for p in paths])


def sweep_argv(*extra: str, **overrides: Any) -> list[str]:
    """``csra-posthoc sweep`` arguments: a random-init ``test_resnet`` (timm's 0.37 M-parameter ResNet)
    on a VOC-layout folder at 64 px over a small grid (lams 0.1, 0.5 and the fixed one; 5 variants;
    ``lams=None``, ``temps=None``, ``heads=None`` give the defaults),
    changed by ``overrides`` (Python names of the flags: ``data_dir=p`` -> ``--data-dir p``).

    A value of True gives the bare flag, False its ``--no-`` form, None leaves a default out; a list
    or tuple is joined with commas. Naming ``pretrained`` or ``checkpoint`` replaces ``--random-init``.
    ``extra`` arguments are appended as given.
    """
    options = dict(SWEEP_DEFAULTS)
    if any(source in overrides for source in WEIGHT_SOURCES):
        del options["random_init"]
    options.update(overrides)
    argv = ["sweep"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return [*argv, *extra]


def torchrun_errors(stderr: str) -> str:
    """What a failed torchrun printed: the ranks' own error lines (a C++ ``what()``, a traceback's
    last line), which come before torchrun's summary, then the end of that summary."""
    marks = ("error", "terminate", "what()", "exception", "abort")
    lines = [ln for ln in stderr.splitlines() if any(m in ln.lower() for m in marks)]
    return "\n".join([*lines[-20:], "...", stderr[-1200:]])


def one_line_error(res, *fragments: str) -> None:
    """A CLI result that failed as a user error: exit 2, an ``error:`` line, no traceback, each fragment said."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert any(ln.startswith("error:") for ln in lines), res.output
    assert "Traceback" not in res.output
    text = " ".join(lines)
    for f in fragments:
        assert f in text, (f, res.output)


# -- statistics and results files -----------------------------------------------------------------


def make_stats(n: int = 80, c: int = 5, k: int = 9, seed: int = 0, classes: list[str] | None = None) -> ClassStatistics:
    """Seeded statistics of ``n`` images, ``c`` classes, ``k`` locations, where the max helps:
    one location lights up for the classes present."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, c, generator=g) < 0.3).long()
    labels[:4] = 1  # every class has positives in both halves (almost surely)
    s = torch.randn(n, c, k, generator=g)
    s[..., 0] += 2.5 * labels  # one location lights up for present classes: the max helps
    st = location_statistics(s, CACHED_TEMPERATURES)
    return ClassStatistics(
        ids=[str(i) for i in range(n)], classes=classes or [f"c{i}" for i in range(c)], labels=labels,
        avg=st["avg"], max=st["max"], attn=st["attn"], temperatures=tuple(CACHED_TEMPERATURES), logits=st["avg"], info=StatisticsInfo(model="m"),
    )  # fmt: skip


def subset_stats(stats: ClassStatistics, mask: torch.Tensor) -> ClassStatistics:
    """The images of ``stats`` where ``mask`` holds."""
    idx = mask.nonzero().flatten()
    return ClassStatistics(
        ids=[stats.ids[i] for i in idx], classes=stats.classes, labels=stats.labels[idx], avg=stats.avg[idx], max=stats.max[idx],
        attn=stats.attn[idx], temperatures=stats.temperatures, logits=stats.logits[idx], info=stats.info,
    )  # fmt: skip


def write_results(path: Path, model: str, dataset: str, seed: int, extra: dict | None = None) -> dict:
    """A sweep results JSON over ``make_stats(seed=seed)``, as the sweep writes it."""
    stats = make_stats(seed=seed)
    stats.info = StatisticsInfo(model=model, dataset=dataset, split="test")
    data = results_dict(sweep(stats, task="multi_label", fixed_lam=paper_fixed_lam(model)), stats, extra)
    path.write_text(json.dumps(data))
    return data


# -- dataset fixtures (written by csra_posthoc.data.fixtures) -------------------------------------

COCO_CATEGORIES = [{"id": 90, "name": "toothbrush", "supercategory": "x"}, {"id": 1, "name": "person", "supercategory": "x"},
                   {"id": 3, "name": "car", "supercategory": "x"}]  # fmt: skip
COCO_IMAGES = [
    {"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
    {"id": 7, "file_name": "COCO_val2014_000000000007.jpg"},
    {"id": 100, "file_name": "COCO_val2014_000000000100.jpg"},  # no annotation
    {"id": 9, "file_name": "COCO_val2014_000000000009.jpg"},
]
COCO_ANNOTATIONS = [
    {"image_id": 42, "category_id": 1},
    {"image_id": 42, "category_id": 1},
    {"image_id": 42, "category_id": 90},
    {"image_id": 7, "category_id": 3, "iscrowd": 1},  # crowd counts as a label
    {"image_id": 9, "category_id": 1},
    {"image_id": 9, "category_id": 3},
]

WIDER_A = [1, -1, 0, 1, -1, -1, 0, 1, -1, 1, -1, -1, 0, 1]
WIDER_B = [-1, 1, 1, 0, 0, -1, -1, -1, 1, -1, -1, 1, -1, -1]
WIDER_IMAGES = [
    {
        "file_name": "0--Parade/0_Parade_marchingband_1_1.jpg",
        "size": (40, 30),
        "targets": [
            {"bbox": [2, 3, 10, 12], "attribute": WIDER_A},  # inside
            {"bbox": [30.5, 10, 20, 50], "attribute": WIDER_B},  # crosses the right and bottom edges: clipped
            {"bbox": [5, 5, 0, 8], "attribute": WIDER_A},  # zero width: degenerate, skipped
        ],
    },
    {
        "file_name": "1--Handshaking/1_Handshaking_2.jpg",
        "size": (20, 24),
        "targets": [{"bbox": [-4, -2, 10, 9], "attribute": WIDER_B}],
    },
]


def random_split_problem(
    seed: int, n: int = 50, c: int = 4, positive_rate: float = 0.35
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """A random multi-label problem for the size / clutter splits: scores with many ties, labels with
    5 % unknown (-1), each positive's size bin (0-2, 10 % without a box: -1), its instance bin (0-1)
    and each image's label-count group (1, 2, 3+ positives: 0-2; none: -1)."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, c, generator=g) < positive_rate).to(torch.int8)
    labels[torch.rand(n, c, generator=g) < 0.05] = -1
    scores = torch.round(torch.randn(n, c, generator=g) * 3) / 3  # many ties
    rng = np.random.default_rng(seed)
    pos = labels.numpy() == 1
    size = np.where(pos, rng.integers(0, 3, (n, c)), -1)
    size[pos & (rng.random((n, c)) < 0.1)] = -1
    inst = np.where(size >= 0, rng.integers(0, 2, (n, c)), -1)
    count = pos.sum(1)
    group = np.where(count == 0, -1, np.minimum(count, 3) - 1)
    return scores, labels, size, inst, group
