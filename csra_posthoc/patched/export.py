"""Write a patched model as a file that runs without this package, and check it against eager.

The suffix picks the format:

- ``.safetensors``: tensors + the JSON config (restored by :func:`csra_posthoc.load_patched`);
- ``.pt2``: a ``torch.export`` program (``torch.export.load(path).module()``): the format PyTorch
  maintains going forward, with a dynamic batch axis;
- ``.ts``: TorchScript, traced (``torch.jit.load(path)``): for libtorch / C++ and older runtimes;
- ``.onnx``: ONNX (opset :data:`ONNX_OPSET`, dynamic batch axis, ``torch.onnx`` dynamo exporter),
  checked with ONNX Runtime; needs the ``export`` extra.

Every file carries the config (preprocessing, classes, lam, ...): safetensors metadata, ONNX
``metadata_props``, an extra file ``csra_config.json`` in ``.pt2`` / ``.ts``. Every file is
written to a temporary name, reloaded, run on a batch of a *different* size than the one it was
traced with, compared with eager, and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import CSRAError, first_line
from ..extraction.backends import ONNX_OPSET, dynamic_batch, onnx_export
from ..outputs import check_output_path
from .config import PatchedConfig
from .model import CONFIG_KEY, PatchedModel, load_patched, read_config, save_patched, verify_state_dict
from .safe_archive import check_pt2

CONFIG_FILE = "csra_config.json"  # extra file inside .pt2 / .ts archives
EXPORT_FORMATS = {".safetensors": "safetensors", ".pt2": "torch.export", ".ts": "torchscript", ".onnx": "onnx"}
CHECK_TOLERANCE = 1e-4  # relative to the scores' scale: max |exported - eager| <= tol * max(1, max |eager|)


@dataclass
class ExportReport:
    """What was written and how closely the reloaded file reproduces the eager patched model."""

    path: Path
    format: str
    max_abs_diff: float
    seconds: float

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "format": self.format,
            "max_abs_diff_vs_eager": self.max_abs_diff,
            "seconds": round(self.seconds, 2),
        }


def export_format(path: str | Path) -> str:
    """The format for ``path``'s suffix, or a one-line refusal listing the suffixes."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise CSRAError(
            f"out {path}: unknown suffix {suffix or '(none)'!r}; use {', '.join(EXPORT_FORMATS)}", param="out"
        )
    return EXPORT_FORMATS[suffix]


def check_out_path(path: str | Path, force: bool = False) -> Path:
    """A known suffix and a writable folder (checked before any work). An existing file is replaced
    atomically, as by every command (README: Outputs); ``force`` is accepted and no longer needed."""
    path = Path(path)
    check_output_path(path, "out")
    export_format(path)
    return path


def _example(patched: PatchedModel, batch: int, seed: int) -> torch.Tensor:
    size = patched.config.preprocessing.size
    device = next(patched.parameters()).device
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)


@contextlib.contextmanager
def _quiet():
    """Exporters print progress and deprecation chatter; the CLI reports the outcome itself."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _write_torch_export(patched: PatchedModel, tmp: str, example: torch.Tensor, config: str) -> None:
    ep = torch.export.export(patched, (example,), dynamic_shapes=dynamic_batch())
    ep.example_inputs = None  # no pickled sample inputs in the file: the program runs without them
    buffer = io.BytesIO()  # torch.export wants a .pt2 name or a buffer; the temporary file has neither
    torch.export.save(ep, buffer, extra_files={CONFIG_FILE: config})
    Path(tmp).write_bytes(buffer.getvalue())


def _write_torchscript(patched: PatchedModel, tmp: str, example: torch.Tensor, config: str) -> None:
    traced = torch.jit.trace(patched, example, check_trace=False)
    torch.jit.save(traced, tmp, _extra_files={CONFIG_FILE: config})


def _write_onnx(patched: PatchedModel, tmp: str, example: torch.Tensor, config: str, opset: int) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise CSRAError("out *.onnx needs the export extra: pip install 'csra-posthoc[export]'", param="out") from None
    onnx_export(patched, example, tmp, opset)
    model = onnx.load(tmp)
    onnx.helper.set_model_props(model, {CONFIG_KEY: config})
    onnx.save(model, tmp)


def load_exported(path: str | Path, fmt: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``x -> scores`` (CPU) for an exported file, loaded once, the way a user without
    this package would load it (safetensors through :func:`load_patched`)."""
    fmt = fmt or export_format(path)
    if fmt == "onnx":
        session = _ort_session(path)
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])
    module: torch.nn.Module
    if fmt == "safetensors":
        module = load_patched(path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu")
    else:
        module = _load_pt2(path).module()
    if fmt != "safetensors":  # the tensors are there to check: both fingerprints, as load_patched does
        verify_state_dict(exported_config(path, fmt), module.state_dict(), path)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x.detach().cpu().float())

    return run


def run_exported(path: str | Path, x: torch.Tensor, fmt: str | None = None) -> torch.Tensor:
    """Scores of an exported file on ``x`` (CPU)."""
    return load_exported(path, fmt)(x)


class ExportedModel:
    """An exported file with its embedded config, for ``predict --patched FILE.onnx|.pt2|.ts``.

    The file computes the CSRA scores only, so there is no baseline beside them (``None``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = export_format(path)
        try:
            self.config = exported_config(path)
            self._run = load_exported(path, self.format)
            self.num_classes = self.config.num_classes
            self.classes = self.config.classes
            if self.format == "onnx":
                self._check_onnx_size()
        except CSRAError:
            raise
        except Exception as exc:
            raise CSRAError(
                f"patched_file {path}: cannot be read as a csra-posthoc {self.format} file ({type(exc).__name__}: {first_line(exc)}); write it with export_patched (CLI: apply --out)",
                param="patched_file",
            ) from None

    def _check_onnx_size(self) -> None:
        """The graph's fixed input size must be the config's preprocessing size (else ONNX Runtime fails per batch)."""
        onnx, _ = _onnx_modules()
        graph = onnx.load(str(self.path), load_external_data=False).graph
        dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        size = self.config.preprocessing.size
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if fixed and any(d != size for d in fixed):
            raise CSRAError(
                f"patched_file {self.path}: its graph takes {'x'.join(str(d) for d in shape[2:])} images but its config says size {size}; write it again with export_patched (CLI: apply --out)",
                param="patched_file",
            )

    def to(self, device: torch.device) -> ExportedModel:
        return self  # runs on CPU, as loaded

    def eval(self) -> ExportedModel:
        return self

    def forward_with_baseline(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        try:
            return self._run(x), None
        except Exception as exc:
            raise CSRAError(
                f"patched_file {self.path}: the {self.format} program failed on a batch of shape {tuple(x.shape)} ({type(exc).__name__}: {first_line(exc)})",
                param="patched_file",
            ) from None


def exported_config(path: str | Path, fmt: str | None = None) -> PatchedConfig:
    """The config embedded in an exported file of any format (read by :meth:`PatchedConfig.parse`, every field checked)."""
    fmt = fmt or export_format(path)
    if fmt == "safetensors":
        return read_config(path)
    if fmt == "onnx":
        onnx, _ = _onnx_modules()
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        text = props.get(CONFIG_KEY)
    else:
        text = _archive_member(path, f"extra/{CONFIG_FILE}")
    if text is None:
        raise CSRAError(
            f"patched_file {path}: holds no csra-posthoc config; write it with export_patched (CLI: apply --out)",
            param="patched_file",
        )
    return PatchedConfig.parse(text, path, rebuild=False)  # JSON only (NaN / Infinity refused), every field checked


def _archive_member(path: str | Path, name: str) -> bytes | None:
    """A ``.pt2`` / ``.ts`` zip member below the archive's one top-level folder, read as bytes
    (no program loaded, nothing unpickled); None when absent."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            tops = {n.split("/", 1)[0] for n in names}
            if len(tops) != 1:
                return None
            member = f"{tops.pop()}/{name}"
            return zf.read(member) if member in names else None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CSRAError(
            f"patched_file {path}: not a zip archive ({first_line(exc)}); write it with export_patched (CLI: apply --out)",
            param="patched_file",
        ) from None


@contextlib.contextmanager
def _torch_export_quiet():
    """``torch.export.load`` logs a traceback (``log.warning(..., exc_info=True)``) before its own error."""
    loggers = [
        logging.getLogger(name) for name in ("torch.export", "torch._export", "torch.export.pt2_archive._package")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _load_pt2(path: str | Path, extra_files: dict | None = None) -> torch.export.ExportedProgram:
    """``torch.export.load`` on bytes :func:`~csra_posthoc.patched.safe_archive.check_pt2` has checked
    (no pickle that is not weights-only, no compiled code, no ``eval``-parsed expression)."""

    data = check_pt2(path)
    with _torch_export_quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(io.BytesIO(data), extra_files=extra_files)


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise CSRAError(
            "reading an .onnx file needs onnx and onnxruntime: pip install 'csra-posthoc[export]'", param="patched_file"
        ) from None
    return onnx, onnxruntime


def _ort_session(path: str | Path):
    """An ONNX Runtime session (CPU, no custom-op libraries) on a file that keeps all its weights inside."""
    onnx, ort = _onnx_modules()
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise CSRAError(
                f"patched_file {path}: refers to external weight files; only files written by export_patched are read",
                param="patched_file",
            )
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@torch.no_grad()
def export_patched(
    patched: PatchedModel, path: str | Path, *, force: bool = False, opset: int = ONNX_OPSET
) -> ExportReport:
    """Write ``patched`` to ``path`` (format from the suffix), reload it, compare with eager, rename into place."""
    if not isinstance(patched, PatchedModel):
        raise CSRAError(
            f"patched: export_patched takes a PatchedModel (from patch() or load_patched()), not {type(patched).__name__}"
        )
    path = check_out_path(path, force)
    fmt = export_format(path)
    patched.check_unchanged()  # the config's fingerprints must describe the tensors written
    device = next(patched.parameters()).device
    patched = patched.cpu().eval()  # a portable file: traced on CPU (the modules go back afterwards)
    try:
        return _export(patched, path, fmt, opset)
    finally:
        patched.to(device)


def _export(patched: PatchedModel, path: Path, fmt: str, opset: int) -> ExportReport:
    config = json.dumps(
        {
            **patched.config.to_json(),
            "export": {"format": fmt, "onnx_opset": opset if fmt == "onnx" else None, "dynamic_batch": True},
        }
    )
    example, check = _example(patched, 2, 0), _example(patched, 3, 1)
    expected = patched(check).float().cpu()
    start = time.perf_counter()
    result: dict[str, float] = {}

    def write(tmp: str) -> None:
        try:
            with _quiet():
                if fmt == "safetensors":
                    save_patched(patched, tmp)
                elif fmt == "torch.export":
                    _write_torch_export(patched, tmp, example, config)
                elif fmt == "torchscript":
                    _write_torchscript(patched, tmp, example, config)
                else:
                    _write_onnx(patched, tmp, example, config, opset)
                got = run_exported(tmp, check, fmt)
        except CSRAError:
            raise
        except Exception as exc:
            raise CSRAError(
                f"out {path}: {fmt} export of {patched.config.model} failed ({type(exc).__name__}: {first_line(exc)})",
                param="out",
            ) from None
        diff = float((got.float() - expected).abs().max())
        scale = max(1.0, float(expected.abs().max()))
        if not np.isfinite(diff) or diff > CHECK_TOLERANCE * scale:
            raise CSRAError(
                f"out {path}: the exported {fmt} model differs from eager by {diff:.3g} (scores up to {scale:.3g}); not written",
                param="out",
            )
        result["diff"] = diff

    atomic_write(path, write)
    return ExportReport(path, fmt, result["diff"], time.perf_counter() - start)
