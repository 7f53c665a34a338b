"""A patched model's config: the typed record every file ``apply`` writes carries (safetensors
metadata, ONNX ``metadata_props``, ``csra_config.json`` in ``.pt2`` / ``.ts``).

:meth:`PatchedConfig.from_json` is the one reader: every field the loaders use is checked, and
anything else is one line naming the file and the field. Fields this version does not know are
kept (:attr:`PatchedConfig.extra`) and written back by :meth:`PatchedConfig.to_json`.
Torch-free.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.transforms import TransformSpec
from ..defaults import HEAD_TEMPERATURES
from ..errors import CSRAError
from ..models.instance import check_architecture_kwargs, known_architecture

FORMAT = "csra-posthoc-patched"
FORMAT_VERSION = 1  # the config's schema version: files of a later version are refused


def json_float(t: float) -> float | str:
    """A temperature as the config writes it ("inf": JSON has no infinity)."""
    return "inf" if math.isinf(t) else float(t)


def from_json_float(t: float | str) -> float:
    return math.inf if t == "inf" else float(t)


def _where(path: str | Path | None) -> str:
    return f"patched_file {path}" if path is not None else "patched config"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


_FIELDS = (
    "format", "format_version", "model", "family", "model_num_classes", "model_kwargs", "num_classes", "classes", "weights",
    "weights_fingerprint", "head", "head_description", "head_fingerprint", "baseline_source", "variant", "lam", "temperature", "heads",
    "temperatures", "preprocessing", "data_config", "input", "output", "thresholds", "threshold_source", "from_results",
    "identity_max_abs_diff", "head_norm", "export", "model_unsaved_buffers", "test_pool", "location_head",
)  # fmt: skip


@dataclass
class PatchedConfig:
    """What a patched model is: the architecture and its weights' fingerprint, the head (the model's
    own or a probe) and its fingerprint, the CSRA settings, the preprocessing, optional class names
    and calibrated thresholds, and where the settings came from. Mutable: ``apply`` adds the
    results' class names, thresholds and provenance before it exports."""

    model: str
    num_classes: int
    model_num_classes: int
    weights_fingerprint: str
    head_fingerprint: str
    head: str  # "model" or "probe"
    lam: float
    temperatures: tuple[float, ...]  # inf: the max
    preprocessing: TransformSpec
    heads: int | None = None
    variant: str | None = None
    family: str | None = None
    model_kwargs: dict[str, Any] | None = None
    classes: list[str] | None = None
    weights: str | None = None
    head_description: str | None = None
    baseline_source: str | None = None
    data_config: dict[str, Any] | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    thresholds: list[float] | None = None
    threshold_source: str | None = None
    from_results: dict[str, Any] | None = None  # path, pick, dataset, split of the results file the settings came from
    identity_max_abs_diff: float | None = None
    head_norm: dict[str, Any] | None = None  # {pooled_norm, eps}: written by save_patched, needed to rebuild the head
    export: dict[str, Any] | None = None  # format, onnx_opset, dynamic_batch: written into exported files
    model_unsaved_buffers: list[str] | None = (
        None  # buffers outside the state dict (not fingerprinted; a TorchScript file holds them)
    )
    test_pool: dict[str, Any] | None = None  # {train_size, window: [h, w]}: timm's test-time pooling instead of CSRA
    location_head: str = (
        "linear"  # "nonlinear": the model's own head applied per location (rebuilt from its modules, no head_norm)
    )
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know, kept as read

    @property
    def temperature(self) -> float | None:
        """The single head's temperature (inf: the max); None with ``heads``."""
        return self.temperatures[0] if self.heads is None else None

    def to_json(self) -> dict[str, Any]:
        """The JSON object a file carries (temperatures "inf" for the max), unknown fields included."""
        out: dict[str, Any] = {"format": FORMAT}
        for name in _FIELDS[1:]:
            value = getattr(self, name)
            if name in ("temperature",):
                value = None if value is None else json_float(value)
            elif name == "temperatures":
                value = [json_float(t) for t in value]
            elif name == "preprocessing":
                value = value.to_json()
            elif (
                name
                in (
                    "identity_max_abs_diff",
                    "head_norm",
                    "export",
                    "from_results",
                    "model_unsaved_buffers",
                    "test_pool",
                )
                and value is None
            ):
                continue  # written once known
            out[name] = value
        out.update(self.extra)
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, config: Any, path: str | Path | None = None, *, rebuild: bool = True) -> PatchedConfig:
        """The config ``config`` (a parsed JSON object) stands for, when it is one this version reads
        and builds from; else a one-line :class:`CSRAError` naming the file and the field.
        ``rebuild``: the config of a safetensors file, which :func:`~csra_posthoc.patched.model.load_patched`
        rebuilds the head from (it must have ``head_norm``); False for the configs inside ``.onnx`` /
        ``.pt2`` / ``.ts`` files."""
        where = _where(path)

        def bad(field: str, why: str) -> Any:
            raise CSRAError(
                f"{where}: config field {field!r} {why}; the file is damaged or was edited: export it again (CLI: apply --out)",
                param="patched_file",
            )

        if not isinstance(config, dict):
            bad("(whole config)", "is not a JSON object")
        if (
            config.get("format") != FORMAT
            or not _is_count(config.get("format_version"))
            or config["format_version"] > FORMAT_VERSION
        ):
            raise CSRAError(
                f"{where}: format {config.get('format')} v{config.get('format_version')} is not one this version reads",
                param="patched_file",
            )
        for name in ("weights_fingerprint", "head_fingerprint"):
            v = config.get(name)
            if not isinstance(v, str) or len(v) != 32 or any(c not in "0123456789abcdef" for c in v):
                raise CSRAError(
                    f"{where}: no valid {name} in its config: not written by this version, or damaged; export it again (CLI: apply --out)",
                    param="patched_file",
                )
        name = config.get("model")
        if not isinstance(name, str) or not name:
            bad("model", "is not a model name")
        if not known_architecture(name):
            bad("model", f"{name!r} is not an architecture timm or torchvision knows")
        for key in ("model_num_classes", "num_classes"):
            if not _is_count(config.get(key)):
                bad(key, "is not a positive integer")
        try:
            check_architecture_kwargs(name, config.get("model_kwargs"))
        except ValueError as exc:
            bad("model_kwargs", str(exc))
        classes = config.get("classes")
        if classes is not None and (
            not isinstance(classes, list)
            or len(classes) != config["num_classes"]
            or not all(isinstance(c, str) for c in classes)
        ):
            bad("classes", f"is not null or a list of {config['num_classes']} names")
        for key in ("weights", "head_description", "baseline_source", "family", "variant"):
            if key in config and config[key] is not None and not isinstance(config[key], str):
                bad(key, "is not a string")
        if config.get("head") not in ("model", "probe"):
            bad("head", "is not 'model' or 'probe'")
        lam = config.get("lam")
        if not (_is_number(lam) and math.isfinite(lam) and lam >= 0):
            bad("lam", f"{lam!r} is not a finite number >= 0")
        heads = config.get("heads")
        if heads is not None and not _is_count(heads):
            bad("heads", f"{heads!r} is not null or a positive integer")
        temps = config.get("temperatures")
        if (
            not isinstance(temps, list)
            or not temps
            or not all(t == "inf" or (_is_number(t) and math.isfinite(t) and t > 0) for t in temps)
        ):
            bad("temperatures", 'is not a non-empty list of numbers > 0 or "inf"')
        if heads is None and len(temps) != 1:
            bad("temperatures", f"has {len(temps)} values for a single-head model (heads null)")
        if heads is not None:
            if heads not in HEAD_TEMPERATURES:
                bad("heads", f"{heads} heads is not one of the paper's sets {sorted(HEAD_TEMPERATURES)}")
            if [from_json_float(t) for t in temps] != list(HEAD_TEMPERATURES[heads]):
                bad("temperatures", f"are not the paper's set for heads {heads}")
        location_head = config.get("location_head", "linear")
        if location_head not in ("linear", "nonlinear"):
            bad("location_head", f"{location_head!r} is not 'linear' or 'nonlinear'")
        if location_head == "nonlinear" and (
            config["head"] != "model" or config.get("baseline_source") != "model_logits"
        ):
            bad("location_head", "is 'nonlinear' but the head is not the model's own or the baseline is not its logits")
        norm = config.get("head_norm")
        norm_ok = (
            isinstance(norm, dict)
            and isinstance(norm.get("pooled_norm"), bool)
            and _is_number(norm.get("eps"))
            and 0 < norm["eps"] < 1
        )
        if ((rebuild and location_head == "linear") or norm is not None) and not norm_ok:
            bad("head_norm", "is not {pooled_norm: bool, eps: number in (0, 1)}")
        try:
            preprocessing = TransformSpec.from_json(config.get("preprocessing"))
        except ValueError as exc:
            bad("preprocessing", str(exc))
        unsaved = config.get("model_unsaved_buffers")
        if unsaved is not None and (not isinstance(unsaved, list) or not all(isinstance(b, str) for b in unsaved)):
            bad("model_unsaved_buffers", "is not a list of buffer names")
        for key in ("data_config", "input", "output", "export", "from_results"):
            if config.get(key) is not None and not isinstance(config[key], dict):
                bad(key, "is not an object")
        thresholds = config.get("thresholds")
        if thresholds is not None and (
            not isinstance(thresholds, list)
            or len(thresholds) != config["num_classes"]
            or not all(_is_number(t) and math.isfinite(t) for t in thresholds)
        ):
            bad("thresholds", f"is not null or a list of {config['num_classes']} finite numbers")
        if config.get("threshold_source") is not None and not isinstance(config["threshold_source"], str):
            bad("threshold_source", "is not null or a string")
        pool = config.get("test_pool")
        if pool is not None and not (
            isinstance(pool, dict)
            and _is_count(pool.get("train_size"))
            and isinstance(pool.get("window"), list)
            and len(pool["window"]) == 2
            and all(_is_count(v) for v in pool["window"])
        ):
            bad("test_pool", "is not null or {train_size: integer > 0, window: [h, w] integers > 0}")
        identity = config.get("identity_max_abs_diff")
        if identity is not None and not _is_number(identity):
            bad("identity_max_abs_diff", "is not null or a number")
        return cls(
            model=name,
            num_classes=config["num_classes"],
            model_num_classes=config["model_num_classes"],
            weights_fingerprint=config["weights_fingerprint"],
            head_fingerprint=config["head_fingerprint"],
            head=config["head"],
            lam=float(lam),
            temperatures=tuple(from_json_float(t) for t in temps),
            preprocessing=preprocessing,
            heads=heads,
            variant=config.get("variant"),
            family=config.get("family"),
            model_kwargs=config.get("model_kwargs"),
            classes=None if classes is None else list(classes),
            weights=config.get("weights"),
            head_description=config.get("head_description"),
            baseline_source=config.get("baseline_source"),
            data_config=config.get("data_config"),
            input=config.get("input"),
            output=config.get("output"),
            thresholds=None if thresholds is None else [float(t) for t in thresholds],
            threshold_source=config.get("threshold_source"),
            from_results=config.get("from_results"),
            identity_max_abs_diff=identity,
            head_norm=norm,
            export=config.get("export"),
            model_unsaved_buffers=unsaved,
            test_pool=pool,
            location_head=location_head,
            format_version=config["format_version"],
            extra={k: v for k, v in config.items() if k not in _FIELDS},
        )

    @classmethod
    def parse(cls, text: str | bytes, path: str | Path | None = None, *, rebuild: bool = True) -> PatchedConfig:
        """A config's JSON text (NaN / Infinity refused), read by :meth:`from_json`."""

        def no_constant(name: str) -> Any:
            raise ValueError(f"{name} is not a number JSON allows")

        try:
            config = json.loads(text, parse_constant=no_constant)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise CSRAError(
                f"{_where(path)}: its config is not valid JSON ({str(exc).splitlines()[0][:120]}); the file is damaged: export it again (CLI: apply --out)",
                param="patched_file",
            ) from None
        return cls.from_json(config, path, rebuild=rebuild)
