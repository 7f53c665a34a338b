"""The results JSON a sweep (or the demo) writes, as typed classes: :class:`ResultsFile` and its
rows, :class:`ResultsRow`.

:meth:`ResultsFile.read` is the one reader (``compare``, and ``apply`` / ``predict`` /
``attention`` with ``from_results``): schema :data:`SCHEMA` only, NaN / Infinity and numbers that
overflow to infinity refused, the required fields present; anything else is one line naming the
file. Fields this version does not type (the per-class tables, the bootstrap, fields a later
release adds such as ``by_object_size``) are kept in :attr:`ResultsFile.extra` and written back by
:meth:`ResultsFile.to_json`; rows with a variant this version does not build (``"test-pool"``)
are read, and refused only where a patched model would be built from them.
The writer is :func:`csra_posthoc.report.tables.results_dict`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.transforms import TransformSpec
from ..errors import CSRAError
from ..options import PICKS, TEST_POOL_PICK, CSRASettings, check_variant

SCHEMA = 1  # results-file version: readers refuse other versions (bump on incompatible changes)
ROW_NAMES = ("best", "fixed", "best_variant")  # the rows a pick names (options.PICKS)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows to {value}")
    return value


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


@dataclass(frozen=True)
class ResultsRow:
    """One row of a sweep: its variant (``max``, ``softmax`` with a temperature, ``heads`` with a
    head count; other variants are read and kept), lam and metrics (percent)."""

    variant: str
    lam: float
    temperature: float | None = None
    heads: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> ResultsRow:
        """The row ``data`` stands for; ``ValueError`` saying what is wrong otherwise (a bad lam:
        ``ValueError("lam ...")``)."""
        if not isinstance(data, dict):
            raise TypeError(f"{type(data).__name__} is not a row")
        value = data.get("lam")
        try:
            lam = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            lam = math.nan
        if isinstance(value, bool) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam {value!r}")
        kind = data.get("variant")
        if not isinstance(kind, str):
            raise ValueError(f"unknown variant {kind!r}")
        temperature, heads = data.get("temperature"), data.get("heads")
        metrics = data.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise ValueError("metrics is not an object")
        known = {"variant", "lam", "temperature", "heads", "metrics"}
        return cls(
            variant=kind,
            lam=lam,
            temperature=None if temperature is None else float(temperature),
            heads=None if heads is None else int(heads),
            metrics=metrics,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "temperature": self.temperature,
            "heads": self.heads,
            "lam": self.lam,
            "metrics": self.metrics,
            **self.extra,
        }

    def metric(self, name: str) -> float:
        """The row's figure ``name`` (percent); ``KeyError`` / ``ValueError`` when absent or not a number."""
        return float(self.metrics[name])

    def settings(self) -> CSRASettings:
        """The CSRA settings that reproduce the row; ``ValueError`` for a variant a patched model cannot be."""
        if self.variant == "heads":
            if self.heads is None:
                raise ValueError("heads variant without 'heads'")
            temperature, heads = None, self.heads
        elif self.variant == "softmax":
            if self.temperature is None:
                raise ValueError("softmax variant without 'temperature'")
            temperature, heads = self.temperature, None
        elif self.variant == "max":
            temperature, heads = math.inf, None
        else:
            raise ValueError(f"unknown variant {self.variant!r}")
        check_variant(temperature, heads)
        return CSRASettings(self.lam, temperature, heads)


@dataclass
class ResultsFile:
    """A sweep's results JSON: what was measured (model, weights and head fingerprints, dataset,
    split, classes, transform) and the rows. ``path`` / ``param`` / ``label`` say where it came
    from, so every later refusal names the file (``from_results r.json: ...``)."""

    model: str
    dataset: str | None = None
    split: str | None = None
    num_images: int | None = None
    classes: list[str] | None = None
    primary_metric: str | None = None
    head: str | None = None
    head_fingerprint: str | None = None
    head_file: str | None = None
    weights: str | None = None
    weights_fingerprint: str | None = None
    transform: TransformSpec | None = None  # None: not recorded (an older sweep) or unreadable
    baseline: dict[str, Any] = field(default_factory=dict)  # the baseline's metrics (percent)
    schema: int = SCHEMA
    extra: dict[str, Any] = field(
        default_factory=dict
    )  # every other field, as read (rows, bootstrap, per-class tables, later additions)
    path: Path | None = field(default=None, compare=False)
    param: str = field(default="from_results", compare=False)
    label: str = field(default="from_results", compare=False)

    _TYPED = (
        "schema", "model", "dataset", "split", "num_images", "classes", "primary_metric", "head", "head_fingerprint", "head_file",
        "weights", "weights_fingerprint", "transform", "baseline",
    )  # fmt: skip

    @property
    def where(self) -> str:
        """How messages name the file: ``from_results r.json``, or the path alone."""
        if self.path is None:
            return self.label or "results"
        return f"{self.label} {self.path}" if self.label else str(self.path)

    @classmethod
    def read(
        cls, path: str | Path, *, required: Sequence[str] = ("model",), param: str = "from_results", label: str = ""
    ) -> ResultsFile:
        """A results JSON of schema :data:`SCHEMA` with the ``required`` fields, else one line naming
        the file and what is wrong. NaN / Infinity (which Python's json would accept) and numbers
        that overflow to infinity are refused: a figure that is not a number is never shown or written.
        ``label`` prefixes the path in messages (e.g. ``"from_results"``); ``param`` is the parameter
        the errors name."""
        path = Path(path)
        where = f"{label} {path}" if label else str(path)
        hint = "pass the results file a sweep wrote (run_sweep's `out`)"
        if not path.is_file():
            raise CSRAError(f"{where}: no such results file", param=param)
        try:
            data = json.loads(path.read_text(), parse_constant=_refuse_constant, parse_float=_finite_float)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CSRAError(f"{where}: not JSON ({exc}); {hint}", param=param) from None
        except ValueError as exc:  # NaN / Infinity / overflow
            raise CSRAError(
                f"{where}: holds a value that is not a finite number ({exc}); the file is damaged or was edited: re-run the sweep",
                param=param,
            ) from None
        if not isinstance(data, dict) or not all(k in data for k in required):
            raise CSRAError(
                f"{where}: not a csra-posthoc results file (no {' / '.join(required)}); {hint}", param=param
            )
        if data.get("schema") != SCHEMA:
            found = (
                "no schema field (written before schema 1)" if "schema" not in data else f"schema {data['schema']!r}"
            )
            raise CSRAError(
                f"{where}: {found}, this version reads schema {SCHEMA}; re-run the sweep with this version", param=param
            )
        return cls.from_json(data, path=path, param=param, label=label)

    @classmethod
    def from_json(
        cls, data: dict[str, Any], *, path: str | Path | None = None, param: str = "from_results", label: str = ""
    ) -> ResultsFile:
        """The typed view of a results dict (as :func:`~csra_posthoc.report.tables.results_dict`
        builds it); the schema and required fields are :meth:`read`'s to check."""
        where = (f"{label} {path}" if label else str(path)) if path is not None else (label or "results")
        classes = data.get("classes")
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise CSRAError(f"{where}: its classes are not a list of names; re-run the sweep", param=param)
        try:
            transform = TransformSpec.from_json(data["transform"]) if data.get("transform") else None
        except ValueError:
            transform = None
        num_images = data.get("num_images")
        baseline = data.get("baseline")
        return cls(
            schema=data.get("schema", SCHEMA),
            model=str(data.get("model")),
            dataset=_str_or_none(data.get("dataset")),
            split=_str_or_none(data.get("split")),
            num_images=num_images if isinstance(num_images, int) and not isinstance(num_images, bool) else None,
            classes=None if classes is None else list(classes),
            primary_metric=_str_or_none(data.get("primary_metric")),
            head=_str_or_none(data.get("head")),
            head_fingerprint=data.get("head_fingerprint") or None,
            head_file=data.get("head_file")
            if isinstance(data.get("head_file"), str) and data.get("head_file")
            else None,
            weights=_str_or_none(data.get("weights")),
            weights_fingerprint=data.get("weights_fingerprint") or None,
            transform=transform,
            baseline=baseline if isinstance(baseline, dict) else {},
            extra={k: v for k, v in data.items() if k not in cls._TYPED},
            path=None if path is None else Path(path),
            param=param,
            label=label,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object (fields this version does not type included, as read)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in self._TYPED}
        out["transform"] = None if self.transform is None else self.transform.to_json()
        out.update(self.extra)
        return out

    def row(self, name: str) -> ResultsRow:
        """Row ``name`` (``best``, ``fixed``, ``best_variant``); one line naming the file and the row when unreadable."""
        where = f"{self.where}: its {name!r} row"
        try:
            return ResultsRow.from_json(self.extra.get(name))
        except ValueError as exc:
            if str(exc).startswith("lam "):  # a bad value names the file and its row, not `lam` (the user gave none)
                raise CSRAError(f"{where} has {exc}: it must be a finite number >= 0", param=self.param) from None
            raise CSRAError(f"{where} is unreadable ({exc})", param=self.param) from None
        except TypeError as exc:
            raise CSRAError(f"{where} is unreadable ({exc})", param=self.param) from None

    def settings(self, pick: str) -> CSRASettings:
        """The settings of the row ``pick`` names (best, fixed, best-variant), as a patched model reproduces it."""
        if pick == TEST_POOL_PICK:
            raise CSRAError(
                "pick test-pool: timm's test-time pooling is built by apply only (its `test_pool`); give best, fixed or best-variant",
                param="pick",
            )
        name = CSRASettings(pick=pick).row
        row = self.row(name)
        try:
            settings = row.settings()
        except (ValueError, CSRAError) as exc:
            raise CSRAError(
                f"{self.where}: its {name!r} row has an unusable variant ({exc})", param=self.param
            ) from None
        return CSRASettings(settings.lam, settings.temperature, settings.heads, pick=pick)

    @property
    def uses_probe(self) -> bool:
        """Whether the results were measured with a fitted probe (not the model's own head)."""
        return str(self.head or "").startswith("linear probe") and bool(self.head_fingerprint)

    def thresholds(self, pick: str) -> tuple[list[float], str, str] | None:
        """The calibrated per-class thresholds of the row ``pick`` names (raw score scale), their
        method and a one-line source; None when the file has none (single-label tasks, older files)."""
        name = PICKS[pick]
        entry = (self.extra.get("thresholds") or {}).get(name)
        if entry is None:
            return None
        values = entry.get("values") if isinstance(entry, dict) else None
        count = len(self.classes) if self.classes is not None else -1
        if (
            not isinstance(values, list)
            or len(values) != count
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        ):
            raise CSRAError(
                f"{self.where}: its {name!r} thresholds are unreadable (not {count} finite numbers)", param=self.param
            )
        file_name = self.path.name if self.path is not None else "the results"
        source = f"per-class F1 on {self.dataset} {self.split} ({self.num_images} images), row {name} of {file_name}"
        method = entry.get("method") or "calibrated"
        return [float(v) for v in values], str(method), " ".join(source.split())  # one line

    def train_size(self) -> int:
        """The training size of the file's test-pool row (refused when it has none)."""
        rows = [r for r in self.extra.get("rows") or [] if isinstance(r, dict) and r.get("variant") == "test-pool"]
        size = rows[0].get("train_size") if rows else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise CSRAError(
                f"{self.where}: has no test-pool row (sweep with --test-pool, or an --img-size above the model's)",
                param=self.param,
            )
        return size

    def interval(self, name: str) -> tuple[float, float] | None:
        """The bootstrap's 95 % interval of row ``name``'s delta (``best``, ``fixed``, ``held_out``); None without one."""
        block = (self.extra.get("bootstrap") or {}).get(name)
        if isinstance(block, dict) and "low" in block and "high" in block:
            return float(block["low"]), float(block["high"])
        return None
