"""Figures: the lam curve of a sweep and the per-location class scores of one image (the paper's Fig. 4).

matplotlib is imported inside the functions with the Agg backend forced, so a figure never needs
a display (a headless server, CI) and importing this module costs nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..defaults import FIGURE_FORMATS
from ..evaluation.results import Interval, SweepResult, ranked
from ..options import check_figure_path

FORMATS = FIGURE_FORMATS


def check_plot_path(path: str | Path, param: str = "path") -> Path:
    """A writable figure path: a known suffix and an existing folder (no folder is created)."""
    check_figure_path(path, param)
    return Path(path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # never a display: works on a headless machine
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fmt = path.suffix.lower().lstrip(".")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def plot_lam_curve(
    result: SweepResult,
    path: str | Path,
    *,
    band: Mapping[float, Interval] | None = None,
    title: str | None = None,
) -> Path:
    """Primary metric vs lam, one line per variant, the baseline as a horizontal line, the best lam
    and the fixed lam of the max variant marked. ``band`` (lam -> bootstrap interval of the max
    variant's delta, see :func:`csra_posthoc.evaluation.bootstrap.lam_band`) is shaded around the max line."""
    path = check_plot_path(path)
    plt = _pyplot()
    p = result.primary
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in result.rows:
        lines[row.variant.label].append((row.lam, row.metrics[p]))
    base = result.baseline.metrics[p]
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    softmax = [label for label in lines if label.startswith("softmax")]
    multi = [label for label in lines if label.startswith("heads")]
    # the legend names the max line, each family once (its colour ramp) and each family's best line:
    # a dozen variant entries would hide the plot
    best_of = {
        fam: max(members, key=lambda lab: max(v for _, v in lines[lab]))
        for fam, members in (("softmax", softmax), ("heads", multi))
        if members
    }
    for label, points in lines.items():
        lam, value = zip(*sorted(points), strict=True)
        if label == "max":
            style = {"color": "C0", "linewidth": 2.4, "marker": "o", "markersize": 3.5, "zorder": 3}
            name = label
        else:
            fam, members, cmap, dash = (
                ("softmax", softmax, plt.cm.Greens, "-") if label in softmax else ("heads", multi, plt.cm.Oranges, "--")
            )
            # one colour ramp per family, light -> dark in the family's order
            style = {
                "color": cmap(0.35 + 0.6 * members.index(label) / max(len(members) - 1, 1)),
                "linewidth": 1.0,
                "linestyle": dash,
                "zorder": 2,
            }
            if label == best_of[fam]:
                style["linewidth"] = 1.8
                name = f"{label} (best {fam})"
            else:
                name = "_nolegend_"
        ax.plot(lam, value, label=name, **style)
    for fam, members, cmap, dash in (("softmax", softmax, plt.cm.Greens, "-"), ("heads", multi, plt.cm.Oranges, "--")):
        if len(members) > 1:  # one legend entry for the whole family (an empty proxy line)
            ax.plot(
                [],
                [],
                color=cmap(0.65),
                linestyle=dash,
                linewidth=1.0,
                label=f"{fam}: {len(members)} variants, {members[0]} … {members[-1]} (light → dark)",
            )
    if band:
        band_lams = sorted(band)
        ax.fill_between(
            band_lams,
            [base + band[x].low for x in band_lams],
            [base + band[x].high for x in band_lams],
            color="C0",
            alpha=0.18,
            label="max: baseline + 95 % bootstrap Δ",
            zorder=1,
        )
    ax.axhline(base, color="0.3", linestyle="--", linewidth=1, label=f"baseline {base:.2f}")
    ax.plot(
        [result.best.lam],
        [result.best.metrics[p]],
        marker="*",
        markersize=14,
        color="C3",
        linestyle="none",
        label=f"best λ={result.best.lam:g} (optimistic)",
        zorder=4,
    )
    ax.plot(
        [result.fixed.lam],
        [result.fixed.metrics[p]],
        marker="D",
        markersize=7,
        color="k",
        linestyle="none",
        label=f"fixed λ={result.fixed.lam:g}",
        zorder=4,
    )
    ax.set_xlabel("λ")
    ax.set_ylabel(f"{p} (%)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def plot_attention(
    image: np.ndarray,
    maps: np.ndarray,
    names: Sequence[str],
    baseline: Sequence[float],
    patched: Sequence[float],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """The image and, per class, its per-location scores ``maps`` ``(k, h, w)`` as a heat map over
    it; each panel's title gives the class, its baseline (average) score and its CSRA score.
    ``image`` is ``(H, W, 3)`` in [0, 1]."""
    path = check_plot_path(path)
    plt = _pyplot()
    k = len(names)
    fig, axes = plt.subplots(1, k + 1, figsize=(3.0 * (k + 1), 3.4), squeeze=False)
    axes = axes[0]
    height, width = image.shape[:2]
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for ax, name, m, b, s in zip(axes[1:], names, maps, baseline, patched, strict=True):
        ax.imshow(image)
        shown = ax.imshow(m, cmap="jet", alpha=0.5, extent=(0, width, height, 0), interpolation="bilinear")
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        bar.set_label("per-location class score", fontsize=6)
        ax.set_title(f"{name}\nbaseline {b:.2f} → CSRA {s:.2f}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_class_deltas(
    panels: Mapping[str, Any], path: str | Path, *, ylabel: str = "Δ (pp)", title: str | None = None
) -> Path:
    """Per-class deltas, one panel per row (``panels``: label -> :class:`csra_posthoc.evaluation.per_class.ClassDeltas`),
    each sorted largest gain first, as bars with their 95 % interval as whiskers; bars whose interval
    excludes 0 are coloured (green gain, red loss), the others grey. Classes without a delta are left out."""
    from matplotlib.patches import Patch

    path = check_plot_path(path, "plot_classes")
    plt = _pyplot()
    count = max(len(d.classes) for d in panels.values())
    width = min(max(6.0, 0.2 * count + 1.5), 40.0)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.6 * len(panels)), squeeze=False)
    for ax, (label, deltas) in zip(axes[:, 0], panels.items(), strict=True):
        order = [k for k in ranked(deltas) if not np.isnan(deltas.delta[k])]
        d, low, high = (np.asarray(a, dtype=float)[order] for a in (deltas.delta, deltas.low, deltas.high))
        sig = np.asarray(deltas.significant)[order]
        x = np.arange(len(order))
        colours = ["C2" if s and v > 0 else ("C3" if s and v < 0 else "0.65") for s, v in zip(sig, d, strict=True)]
        ax.bar(x, d, color=colours, width=0.8, zorder=2)
        has_iv = ~np.isnan(low) & ~np.isnan(high)
        if has_iv.any():
            err = np.clip(np.vstack([d - low, high - d])[:, has_iv], 0, None)
            ax.errorbar(x[has_iv], d[has_iv], yerr=err, fmt="none", ecolor="0.2", elinewidth=0.8, capsize=1.5, zorder=3)
        ax.axhline(0.0, color="0.3", linewidth=0.8)
        if len(order) <= 120:
            ax.set_xticks(x)
            names = [deltas.classes[k].replace("$", r"\$") for k in order]  # no mathtext from a class name
            ax.set_xticklabels(names, rotation=90, fontsize=6 if len(order) > 40 else 8)
        else:
            ax.set_xticks([])
            ax.set_xlabel(f"{len(order)} classes, sorted by Δ")
        ax.set_xlim(-0.8, max(len(order), 1) - 0.2)
        ax.set_ylabel(ylabel)
        ax.set_title(
            f"{label}: {int((sig & (d > 0)).sum())} classes up, {int((sig & (d < 0)).sum())} down (95 % CI excludes 0)",
            fontsize=9,
        )
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(
        handles=[
            Patch(color="C2", label="gain, 95 % CI > 0"),
            Patch(color="C3", label="loss, 95 % CI < 0"),
            Patch(color="0.65", label="CI contains 0"),
        ],
        fontsize=7,
        loc="best",  # the corner the bars and whiskers leave free
    )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
