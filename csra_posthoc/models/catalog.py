"""Which architectures CSRA can patch, measured: list them (like ``timm.list_models``) and check one.

:func:`check_model` builds an architecture at random init (``num_classes=10``, no download), runs
``patch(model, lam=0)`` on a small input and compares the patched scores with an independent
reference: the model's own logits (``"supported"``, ``"non-linear head"``), or, for class-token
models whose baseline is the patch average (``"patch average"``), the model's own head applied to
the mean of its patch tokens. A :class:`~csra_posthoc.errors.CSRAError` from ``patch`` is a
``"refused"`` with its reason; any other exception is a ``"crash"``; a difference over
:data:`IDENTITY_BAR` of the reference's scale is an ``"identity failure"``. ``"skipped"``: over the
parameter bound or the time budget, or the architecture itself does not build or run at random
init (not a CSRA outcome; the reason says which).
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from ..atomic import atomic_write
from ..errors import CSRAError, first_line
from ..options import check_img_size
from ..outputs import check_outputs
from ..patched.model import patch
from ..progress import progress_bar
from ..text import plain
from .base import identity_scale, probe_input

Status = Literal["supported", "patch average", "non-linear head", "refused", "crash", "identity failure", "skipped"]
STATUSES: tuple[str, ...] = (
    "supported",
    "patch average",
    "non-linear head",
    "refused",
    "crash",
    "identity failure",
    "skipped",
)
# what counts as supported in the target: the identity, the documented patch average, the labelled non-linear variant
SUPPORTED_STATUSES: tuple[str, ...] = ("supported", "patch average", "non-linear head")
TORCHVISION_PREFIX = "torchvision:"
IDENTITY_BAR = 1e-4  # relative to max(1, max |reference|): the bar (patch() itself refuses over 1e-3)
CHECK_NUM_CLASSES = 10
SMALL_INPUT = 96  # tried first for models without a fixed input size (3x3 at stride 32)
DEFAULT_TIME_BUDGET = 120.0  # seconds per model

# A fixed sample across families (the smallest variant of each), to judge the coverage target on
# in tests: tests/models/test_models_command.py checks all of it. BEiT and VGG have no variant under
# 30 M parameters, so they are left to the full run.
CHECK_SAMPLE: tuple[str, ...] = (
    "resnet10t",
    "efficientnet_lite0",
    "mobilenetv2_035",
    "mobilenetv3_small_050",
    "ghostnet_050",
    "lcnet_050",
    "mnasnet_small",
    "tinynet_e",
    "regnetx_002",
    "regnetz_005",
    "densenet121",
    "dla46_c",
    "resnest14d",
    "ese_vovnet19b_dw",
    "cs3darknet_focus_s",
    "rexnet_100",
    "repvgg_a0",
    "mobileone_s1",
    "hgnetv2_b0",
    "tresnet_m",
    "convnext_atto",
    "inception_next_atto",
    "edgenext_xx_small",
    "poolformer_s12",
    "mambaout_femto",
    "starnet_s050",
    "vit_tiny_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "eva02_tiny_patch14_224",
    "cait_xxs24_224",
    "xcit_nano_12_p16_224",
    "pit_ti_224",
    "convit_tiny",
    "crossvit_tiny_240",
    "swin_tiny_patch4_window7_224",
    "swinv2_cr_tiny_ns_224",
    "maxvit_pico_rw_256",
    "coatnet_pico_rw_224",
    "mixer_s32_224",
    "resmlp_12_224",
    "gmlp_ti16_224",
    "levit_128s",
    "pvt_v2_b0",
    "twins_svt_small",
    "repvit_m1",
    "fastvit_t8",
    "efficientformer_l1",
    "efficientformerv2_s0",
    "mobilevit_xxs",
    "efficientvit_b0",
    "torchvision:resnet18",
    "torchvision:mobilenet_v3_small",
)


@dataclass
class ModelCheck:
    """One architecture's outcome. ``max_abs_diff`` / ``rel_diff``: patched scores at lam = 0 against
    the reference (``rel_diff`` divided by max(1, max |reference|)); None where nothing was compared."""

    name: str
    family: str
    params: int | None
    status: Status
    reason: str = ""
    max_abs_diff: float | None = None
    rel_diff: float | None = None
    img_size: int | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def list_models(pattern: str | None = None, *, timm_models: bool = True, torchvision: bool = True) -> list[str]:
    """Architecture names matching ``pattern`` (fnmatch, case-insensitive, as ``timm.list_models``):
    timm's, then torchvision's classification models as ``torchvision:<name>``. Hugging Face models
    are not listed (pass ``hf:`` names to ``check_model`` where supported)."""
    names: list[str] = []
    if timm_models:
        import timm

        names += timm.list_models()
    if torchvision:
        names += [TORCHVISION_PREFIX + n for n in _torchvision_names()]
    if pattern:
        rule = pattern.lower()
        names = [n for n in names if fnmatch.fnmatchcase(n.lower(), rule)]
    return names


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


@lru_cache(maxsize=1)
def _timm_modules() -> dict[str, str]:
    import timm

    found: dict[str, str] = {}
    for module in timm.list_modules():
        for name in timm.list_models(module=module):
            found.setdefault(name, module)
    return found


def model_family(name: str) -> str:
    """The group a name is shown under: timm's module (``resnet``, ``vision_transformer``, ...) or ``torchvision``."""
    if name.startswith(TORCHVISION_PREFIX):
        return "torchvision"
    return _timm_modules().get(name, "unknown")


def count_params(name: str) -> int:
    """Parameters of ``name`` at ``num_classes=10``, built on the meta device (no memory, no init)."""
    import torch

    try:
        with torch.device("meta"):
            model = _build(name, None)
    except NotImplementedError:  # torchvision RegNet computes its widths with tensors: none on the meta device
        known = _torchvision_weights_params(name)
        if known is None:
            raise
        return known
    return sum(p.numel() for p in model.parameters())


def _torchvision_weights_params(name: str) -> int | None:
    """The parameter count torchvision's weights metadata gives (at its 1,000 classes: close enough
    for a bound), or None for a name that is not torchvision's or has no weights."""
    if not name.startswith(TORCHVISION_PREFIX):
        return None
    import torchvision.models as tvm

    try:
        return int(tvm.get_model_weights(name[len(TORCHVISION_PREFIX) :]).DEFAULT.meta["num_params"])
    except Exception:
        return None


def _build(name: str, img_size: int | None) -> Any:
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision.models as tvm

        arch = name[len(TORCHVISION_PREFIX) :]
        if arch not in _torchvision_names():
            raise CSRAError(f"model {name}: not a torchvision classification model")
        kwargs: dict[str, Any] = {"weights": None, "num_classes": CHECK_NUM_CLASSES}
        if arch in ("googlenet", "inception_v3"):
            kwargs["aux_logits"], kwargs["init_weights"] = False, True
        return tvm.get_model(arch, **kwargs)
    import timm

    if not timm.is_model(name):
        raise CSRAError(f"model {name}: not a timm architecture (list them with `csra-posthoc models PATTERN`)")
    extra: dict[str, Any] = {}
    if img_size is not None:  # what patch() verifies at and what the check feeds: timm's data config reads input_size
        extra["pretrained_cfg_overlay"] = {"input_size": (3, img_size, img_size)}
    return timm.create_model(name, pretrained=False, num_classes=CHECK_NUM_CLASSES, **extra)


def _sizes(name: str, img_size: int | None) -> tuple[list[int], bool]:
    """Input sizes to try in order, and whether the first is the model's own (fixed) size."""
    if img_size is not None:
        return [img_size], True
    if name.startswith(TORCHVISION_PREFIX):
        arch = name[len(TORCHVISION_PREFIX) :]
        fixed = 224 if arch.startswith(("vit_", "maxvit")) else None
        default = 299 if arch == "inception_v3" else 224
        return ([fixed] if fixed else [SMALL_INPUT, default]), bool(fixed)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    default = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    if cfg is not None and cfg.fixed_input_size:
        return [default], True
    return ([SMALL_INPUT, default] if default > SMALL_INPUT else [default]), False


def check_model(
    name: str,
    img_size: int | None = None,
    *,
    max_params: int | None = None,
    time_budget: float | None = DEFAULT_TIME_BUDGET,
    params: int | None = None,
) -> ModelCheck:
    """Build ``name`` at random init, CSRA-patch it at lam = 0 and compare with the reference.

    ``img_size``: the square input (default: the model's own size where it is fixed, else
    :data:`SMALL_INPUT`, then the model's own if the model itself fails at the small one).
    ``max_params``: skip models with more parameters (counted on the meta device first, unless
    ``params``, a count already known at ``num_classes=10``, is given).
    ``time_budget``: seconds; a model whose build and plain forward pass already took longer is
    skipped before it is patched (the budget is checked between steps, not enforced by a timer).
    """
    import torch

    start = time.perf_counter()
    family = model_family(name)
    result = ModelCheck(name=name, family=family, params=params, status="skipped")

    def done(status: Status, reason: str = "") -> ModelCheck:
        result.status, result.reason = status, reason
        result.seconds = round(time.perf_counter() - start, 3)
        return result

    if max_params is not None and result.params is None:
        try:
            result.params = count_params(name)
        except CSRAError:
            raise
        except Exception as exc:
            return done("skipped", f"cannot be built to count its parameters: {type(exc).__name__}: {first_line(exc)}")
    if max_params is not None and result.params is not None:
        if result.params > max_params:
            return done("skipped", f"{result.params / 1e6:.1f} M parameters, over the bound of {max_params / 1e6:g} M")
    sizes, _fixed = _sizes(name, img_size)
    torch.manual_seed(0)
    model = x = logits = None
    for size in sizes:
        try:
            model = _build(name, size).eval()
        except CSRAError:
            raise
        except Exception as exc:
            return done(
                "skipped", f"the architecture does not build at random init: {type(exc).__name__}: {first_line(exc)}"
            )
        x = probe_input(model, size)
        try:
            with torch.no_grad():
                logits = model(x)
        except Exception as exc:
            if size != sizes[-1]:
                continue
            return done(
                "skipped", f"the model itself fails on a {size}x{size} input: {type(exc).__name__}: {first_line(exc)}"
            )
        if size != sizes[-1] and _single_location(model, x):
            continue  # a 1x1 map at the small input (stride 64, Inception's valid convs): the model's own size
        result.img_size = size
        break
    assert model is not None and x is not None and logits is not None
    result.params = result.params if result.params is not None else sum(p.numel() for p in model.parameters())
    if time_budget is not None and time.perf_counter() - start > time_budget:
        return done("skipped", f"over the time budget of {time_budget:g} s before patching")
    return _compare(model, x, logits, name, done, result)


def _single_location(model: Any, x: Any) -> bool:
    """``forward_features`` gives a 1x1 map on ``x``: nothing to attend over at that size."""
    import torch

    if not callable(getattr(model, "forward_features", None)):
        return False
    try:
        with torch.no_grad():
            raw = model.forward_features(x)
    except Exception:
        return False
    return isinstance(raw, torch.Tensor) and raw.dim() == 4 and raw.shape[-2:].numel() == 1


def _compare(model: Any, x: Any, logits: Any, name: str, done: Any, result: ModelCheck) -> ModelCheck:
    import torch

    try:
        patched = patch(model, lam=0, name=name)
        with torch.no_grad():
            scores = patched(x)
            info = patched.adapter.info
            if info.baseline_source == "patch_average":
                own = getattr(patched.adapter, "patch_average_reference", None)  # several streams: per stream
                reference, what = (
                    own(x) if own is not None else _patch_average_reference(model, x),
                    "the mean of its patch tokens through its own head",
                )
            else:
                reference, what = logits, "its logits"
    except CSRAError as exc:
        return done("refused", first_line(exc, limit=300))
    except Exception as exc:
        return done("crash", f"{type(exc).__name__}: {first_line(exc)}")
    nonlinear = getattr(info, "location_head", "linear") == "nonlinear"
    status: Status = (
        "non-linear head"
        if nonlinear
        else ("patch average" if info.baseline_source == "patch_average" else "supported")
    )
    if reference is None:  # no independent reference for this token layout: the patched output's own consistency only
        return done(status, "patch average (no independent reference for this token layout)")
    reference = reference.float()
    if tuple(scores.shape) != tuple(reference.shape):
        return done(
            "identity failure", f"patched scores have shape {tuple(scores.shape)}, {what} {tuple(reference.shape)}"
        )
    diff = float((scores.float() - reference).abs().max())
    scale = identity_scale(float(reference.abs().max()))
    if math.isfinite(diff):  # JSON has no NaN: a non-finite difference is in the reason
        result.max_abs_diff, result.rel_diff = diff, diff / scale
    if not math.isfinite(diff) or diff > IDENTITY_BAR * scale:
        return done(
            "identity failure",
            f"lam = 0 differs from {what} by {diff:.3g} ({diff / scale:.2g} of their scale, over {IDENTITY_BAR:g})",
        )
    return done(status)


def _patch_average_reference(model: Any, x: Any) -> Any:
    """The patch-average baseline computed the model's own way: every prefix (class / distillation)
    token of ``forward_features`` replaced by the mean of the patch tokens, then ``forward_head``.
    None where the model's features are not tokens with a ``num_prefix_tokens`` prefix."""
    if type(model).__name__ == "VisionTransformer" and type(model).__module__.startswith("torchvision."):
        tokens = model._process_input(x)  # torchvision's own steps: patches, class token, encoder
        tokens = model.encoder(_with_class_token(model, tokens))
        return model.heads(tokens[:, 1:].mean(1))
    prefix = getattr(model, "num_prefix_tokens", None)
    if not prefix or not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
        return None
    feats = model.forward_features(x)
    if not hasattr(feats, "dim") or feats.dim() != 3 or feats.shape[1] <= prefix:
        return None
    feats = feats.clone()
    feats[:, :prefix] = feats[:, prefix:].mean(1, keepdim=True)
    return model.forward_head(feats)


def _with_class_token(model: Any, tokens: Any) -> Any:
    import torch

    return torch.cat([model.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)


def status_counts(checks: list[ModelCheck]) -> dict[str, int]:
    """How many checks have each status, in :data:`STATUSES` order (zeros kept)."""
    return {s: sum(1 for c in checks if c.status == s) for s in STATUSES}


DEFAULT_ALL_MAX_PARAMS = 30_000_000  # check_all's bound unless max_params is given
JSON_SCHEMA = 1


def run_models(
    pattern: str | None = None,
    *,
    check: bool = False,
    check_all: bool = False,
    json_out: str | Path | None = None,
    max_params: int | None = None,
    img_size: int | None = None,
    console: Any = None,
) -> list[ModelCheck] | list[str]:
    """``csra-posthoc models``: list the names matching ``pattern``, or with ``check`` check each
    (a table with counts by status; ``json_out``: the checks as JSON). ``check_all``: every name
    (``max_params`` defaults to :data:`DEFAULT_ALL_MAX_PARAMS` then)."""
    from rich.console import Console

    console = console or Console()
    if pattern is not None and check_all:
        raise CSRAError(f"pattern {pattern!r}: give a pattern or all_models, not both", param="pattern")
    if max_params is not None and max_params < 1:
        raise CSRAError(f"max_params {max_params}: must be >= 1", param="max_params")
    check_img_size(img_size)
    if json_out is not None and not check:
        raise CSRAError("json_out needs `check` (the listing is plain names)", param="json_out")
    if check and pattern is None and not check_all:
        raise CSRAError(
            "`check` needs a pattern (e.g. 'resnet*') or all_models (every architecture, up to 30 M parameters by default)",
            param="pattern",
        )
    check_outputs({"json_out": json_out})
    names = list_models(pattern)
    if not names:
        raise CSRAError(
            f"pattern {pattern!r}: no timm or torchvision architecture matches (patterns as timm.list_models: 'resnet*', '*vit*')",
            param="pattern",
        )
    if not check:
        for name in names:
            console.print(plain(name), markup=False, highlight=False)
        return names
    if check_all and max_params is None:
        max_params = DEFAULT_ALL_MAX_PARAMS
    checks = _check_with_bar(names, img_size, max_params, console)
    _print_table(checks, console)
    if json_out is not None:
        payload = {
            "schema": JSON_SCHEMA,
            "pattern": pattern,
            "max_params": max_params,
            "img_size": img_size,
            "identity_bar": IDENTITY_BAR,
            "seconds": round(sum(c.seconds for c in checks), 3),
            "counts": status_counts(checks),
            "models": [c.to_json() for c in checks],
        }
        text = json.dumps(payload, indent=2, allow_nan=False, default=str)
        atomic_write(Path(json_out), lambda tmp: _write_text(tmp, text + "\n"))
    return checks


def _write_text(path: str, text: str) -> None:
    Path(path).write_text(text)


def _check_with_bar(names: list[str], img_size: int | None, max_params: int | None, console: Any) -> list[ModelCheck]:
    import warnings

    checks = []
    with warnings.catch_warnings():  # random-init builds warn about unused weights, deprecated names, ...
        warnings.simplefilter("ignore")
        if console.is_terminal:
            with progress_bar(console, "checking", len(names), unit="model", transient=True) as advance:
                for name in names:
                    checks.append(check_model(name, img_size, max_params=max_params))
                    advance(1)
        else:
            checks = [check_model(name, img_size, max_params=max_params) for name in names]
    return checks


def _print_table(checks: list[ModelCheck], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    colours = {
        "supported": "green",
        "patch average": "green",
        "non-linear head": "cyan",
        "refused": "yellow",
        "skipped": "dim",
    }
    table = Table(show_edge=False)
    for column in ("model", "params", "status", "reason / max rel diff"):
        table.add_column(column, no_wrap=column != "reason / max rel diff")
    for c in checks:
        params = f"{c.params / 1e6:.1f} M" if c.params is not None else "?"
        detail = c.reason or (f"{c.rel_diff:.1e} at {c.img_size}px" if c.rel_diff is not None else "")
        table.add_row(
            Text(plain(c.name)), params, Text(c.status, style=colours.get(c.status, "bold red")), Text(plain(detail))
        )
    console.print(table)
    counts = ", ".join(f"{n} {s}" for s, n in status_counts(checks).items() if n)
    console.print(Text(f"{len(checks)} models: {counts}"), highlight=False)
