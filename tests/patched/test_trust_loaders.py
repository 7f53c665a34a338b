"""No file the tool reads may run code (issue #20, part 1), and loaders fail in one line.

Each malicious file is a real ``.pt2`` / ``.ts`` written by ``export_patched`` on a tiny model with
one member replaced by a pickle whose ``__reduce__`` creates a marker file; the marker must not
exist afterwards, through the CLI and through the Python API.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.errors import CSRAError

runner = CliRunner()


class Evil:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_torch_save(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(Evil(marker), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import timm

    from csra_posthoc import patch
    from csra_posthoc.patched.export import export_patched

    root = tmp_path_factory.mktemp("exported")
    model = timm.create_model("test_resnet", num_classes=3, pretrained=False)
    patched = patch(model, img_size=32, classes=["a", "b", "c"])
    files = {}
    for suffix in ("pt2", "ts"):
        files[suffix] = root / f"m.{suffix}"
        export_patched(patched, files[suffix])
    image = root / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    files["image"] = image
    return files


def rewrite(src: Path, dst: Path, change) -> None:
    """Copy a zip archive, ``change(name_without_prefix, data) -> bytes | None`` per member (None: keep);
    ``change`` may return extra members under the key ``"+"``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        prefix = zin.namelist()[0].split("/", 1)[0] + "/"
        extra: dict[str, bytes] = {}
        for info in zin.infolist():
            data = zin.read(info)
            new = change(info.filename[len(prefix) :], data, extra)
            zout.writestr(info.filename, data if new is None else new)
        for name, data in extra.items():
            zout.writestr(prefix + name, data)


def _sample_inputs(marker: Path):
    return lambda name, data, extra: evil_torch_save(marker) if name == "data/sample_inputs/model.pt" else None


def _pickled_weight(marker: Path):
    def change(name, data, extra):
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            config["config"][next(iter(config["config"]))]["use_pickle"] = True
            return json.dumps(config).encode()
        if name == "data/weights/weight_0":
            return evil_torch_save(marker)
        return None

    return change


def _pickled_constant(marker: Path, file: str, payload: bytes):
    def change(name, data, extra):
        if name == "data/constants/model_constants_config.json":
            config = json.loads(data)
            config["config"]["evil"] = {"path_name": file, "is_param": False, "use_pickle": True, "tensor_meta": None}
            extra[f"data/constants/{file}"] = payload
            return json.dumps(config).encode()
        return None

    return change


def _size_expression(marker: Path):
    def change(name, data, extra):
        if name == "models/model.json":
            text = data.decode()
            assert "Symbol('s" in text  # the dynamic batch size is a sympy expression
            return text.replace("Symbol('s", f"__import__('os').system('touch {marker}') and Symbol('s", 1).encode()
        return None

    return change


ATTACKS = {
    "sample_inputs": _sample_inputs,
    "pickled_weight": _pickled_weight,
    "pickled_constant": lambda m: _pickled_constant(m, "tensor_evil", evil_torch_save(m)),
    "opaque_constant": lambda m: _pickled_constant(m, "opaque_obj_evil", pickle.dumps(Evil(m))),
    "size_expression": _size_expression,
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.slow  # needs the module's pt2 / TorchScript export
def test_a_tampered_pt2_runs_no_code(exported, tmp_path: Path, attack: str) -> None:
    from csra_posthoc.patched.export import ExportedModel, load_exported

    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt2"
    rewrite(exported["pt2"], evil, ATTACKS[attack](marker))
    res = runner.invoke(app, ["predict", "--patched", str(evil), str(exported["image"])])
    assert not marker.exists(), "the tampered archive ran code"
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "evil.pt2" in lines[0] and "Traceback" not in res.output, res.output
    with pytest.raises(CSRAError, match="evil.pt2"):
        ExportedModel(evil)
    with pytest.raises(CSRAError, match="evil.pt2"):
        load_exported(evil)
    assert not marker.exists()


@pytest.mark.slow  # needs the module's pt2 / TorchScript export
def test_a_member_named_twice_is_refused(exported, tmp_path: Path) -> None:
    """Two members of one name: Python's zipfile reads the last, torch's reader may read the first.
    A scan of one and a load of the other would let a pickle through, so such an archive is refused."""
    from csra_posthoc.patched.export import ExportedModel

    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(exported["pt2"]) as zin, zipfile.ZipFile(evil, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the attack
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data/sample_inputs/model.pt"):
                zout.writestr(info.filename, evil_torch_save(marker))  # first: what a first-match reader gets
            zout.writestr(info.filename, data)  # last: what zipfile's read() gets
    res = runner.invoke(app, ["predict", "--patched", str(evil), str(exported["image"])])
    assert not marker.exists(), "the archive ran code"
    assert res.exit_code == 2 and "occurs twice" in res.output, res.output
    with pytest.raises(CSRAError, match="occurs twice"):
        ExportedModel(evil)
    assert not marker.exists()


@pytest.mark.slow  # needs the module's pt2 / TorchScript export
def test_a_graph_target_outside_torch_ops_is_refused(exported, tmp_path: Path) -> None:
    """``torch.os.system`` resolves by attribute walk from ``torch``; only aten / prims operators pass."""
    from csra_posthoc.patched.export import ExportedModel

    evil = tmp_path / "evil.pt2"

    def change(name, data, extra):
        if name == "models/model.json":
            return data.decode().replace('"torch.ops.aten.relu_.default"', '"torch.os.system"', 1).encode()
        return None

    rewrite(exported["pt2"], evil, change)
    with pytest.raises(CSRAError, match="evil.pt2.*torch.os.system"):
        ExportedModel(evil)


@pytest.mark.parametrize(
    "expr",
    ["s77", "Symbol('s77', positive=True, integer=True)", "2*s0 + 1", "Max(1, s0)", "FloorDiv(s0, 2)", "-u0 <= 3"],
)
def test_plain_size_expressions_pass(expr: str) -> None:
    from csra_posthoc.patched.safe_archive import check_sym_expr

    check_sym_expr(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('x')",
        "eval(chr(49))",
        "s0.__class__",
        "Symbol('x; rm')",
        "(lambda: 1)()",
        "open",
        "Max(1, s0)[0]",
        "Symbol(**{'a': 1})",
    ],
)
def test_code_in_size_expressions_is_refused(expr: str) -> None:
    from csra_posthoc.patched.safe_archive import UnsafeArchive, check_sym_expr

    with pytest.raises(UnsafeArchive):
        check_sym_expr(expr)


@pytest.mark.slow  # needs the module's pt2 / TorchScript export
def test_pt2_written_without_sample_inputs_still_runs(exported) -> None:
    from csra_posthoc.patched.export import ExportedModel

    with zipfile.ZipFile(exported["pt2"]) as zf:
        sizes = {n.split("/", 1)[1]: zf.getinfo(n).file_size for n in zf.namelist()}
    assert sizes["data/sample_inputs/model.pt"] == 0
    scores, _ = ExportedModel(exported["pt2"]).forward_with_baseline(torch.zeros(2, 3, 32, 32))
    assert scores.shape == (2, 3) and torch.isfinite(scores).all()


@pytest.mark.parametrize("suffix", ["pt2", "ts"])
@pytest.mark.parametrize("config", [b"not json {", b"[1, 2]", b'{"no": "num_classes"}'])
@pytest.mark.slow  # needs the module's pt2 / TorchScript export
def test_an_embedded_config_that_is_not_an_object_is_one_line(
    exported, tmp_path: Path, suffix: str, config: bytes
) -> None:
    from csra_posthoc.patched.export import ExportedModel

    bad = tmp_path / f"bad.{suffix}"
    rewrite(exported[suffix], bad, lambda name, data, extra: config if name == "extra/csra_config.json" else None)
    with pytest.raises(CSRAError, match=f"bad.{suffix}") as info:
        ExportedModel(bad)
    assert "\n" not in str(info.value)


@pytest.mark.slow  # needs the module's pt2 / TorchScript export
def test_a_non_archive_pt2_is_one_line(exported, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip at all")
    res = runner.invoke(app, ["predict", "--patched", str(bad), str(exported["image"])])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "bad.pt2" in lines[0], res.output


@pytest.mark.slow  # needs the module's pt2 / TorchScript export
def test_a_tampered_torchscript_runs_no_code(exported, tmp_path: Path) -> None:
    """TorchScript's constants / data pickles are read by the C++ unpickler, which resolves no Python global."""
    from csra_posthoc.patched.export import ExportedModel

    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.ts"
    payload = pickle.dumps(Evil(marker), protocol=2)
    rewrite(exported["ts"], evil, lambda name, data, extra: payload if name in ("constants.pkl", "data.pkl") else None)
    res = runner.invoke(app, ["predict", "--patched", str(evil), str(exported["image"])])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "evil.ts" in lines[0], res.output
    with pytest.raises(CSRAError, match="evil.ts"):
        ExportedModel(evil)
    assert not marker.exists()


def test_a_pickled_checkpoint_is_not_unpickled(tmp_path: Path) -> None:
    from csra_posthoc.models.checkpoint import read_checkpoint

    marker = tmp_path / "MARKER"
    ckpt = tmp_path / "evil.pth"
    ckpt.write_bytes(evil_torch_save(marker))
    with pytest.raises(CSRAError, match="evil.pth"):
        read_checkpoint(ckpt)
    assert not marker.exists()


def test_export_patched_takes_a_patched_model(tmp_path: Path) -> None:
    from csra_posthoc.patched.export import export_patched

    with pytest.raises(CSRAError, match="PatchedModel .*patch\\(\\).*load_patched\\(\\).*Linear"):
        export_patched(torch.nn.Linear(3, 2), tmp_path / "x.pt2")  # type: ignore[arg-type]


@pytest.mark.slow
def test_onnx_without_onnxruntime_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from csra_posthoc.patched.export import ExportedModel

    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07")  # a tiny ModelProto: never reached without the modules
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(CSRAError, match=r"pip install 'csra-posthoc\[export\]'"):
        ExportedModel(path)


@pytest.mark.slow
def test_onnx_with_another_input_size_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    import timm

    from csra_posthoc import patch
    from csra_posthoc.patched.export import CONFIG_FILE, export_patched  # noqa: F401
    from csra_posthoc.patched.model import CONFIG_KEY

    model = timm.create_model("test_resnet", num_classes=3, pretrained=False)
    path = tmp_path / "m.onnx"
    export_patched(patch(model, img_size=32, classes=["a", "b", "c"]), path)
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    config = json.loads(props[CONFIG_KEY])
    config["preprocessing"]["size"] = 48
    onnx.helper.set_model_props(proto, {CONFIG_KEY: json.dumps(config)})
    onnx.save(proto, str(path))
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    res = runner.invoke(app, ["predict", "--patched", str(path), str(image)])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "m.onnx" in lines[0] and "48" in lines[0], res.output
    for text in ("not json {", "[1, 2]"):  # ONNX metadata is parsed as JSON only
        onnx.helper.set_model_props(proto, {CONFIG_KEY: text})
        onnx.save(proto, str(path))
        res = runner.invoke(app, ["predict", "--patched", str(path), str(image)])
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and "m.onnx" in lines[0], res.output


@pytest.mark.slow
def test_real_weights_pt2_round_trip_without_sample_inputs(tmp_path: Path) -> None:
    """efficientnet_lite0 --pretrained (ImageNet) exported as .pt2 and read back through the checked
    loader: the same top classes as eager on a real photo."""
    from skimage import data

    from csra_posthoc import load_model, patch
    from csra_posthoc.patched.export import ExportedModel, export_patched

    adapter = load_model("efficientnet_lite0", pretrained=True)
    patched = patch(adapter, img_size=128)
    path = tmp_path / "lite0.pt2"
    export_patched(patched, path)
    x = torch.from_numpy(
        np.asarray(Image.fromarray(data.astronaut()).resize((128, 128)), dtype=np.float32) / 255.0
    ).permute(2, 0, 1)[None]
    mean = torch.tensor(patched.config.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(patched.config.preprocessing.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    got, _ = ExportedModel(path).forward_with_baseline(x)
    with torch.no_grad():
        want = patched(x)
    assert torch.equal(got.topk(5).indices, want.topk(5).indices)


def test_a_planted_torchvision_download_is_read_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision reads ``$TORCH_HOME/hub/checkpoints/<file>`` with torch.hub's default ``weights_only=False``."""
    import torchvision.models as tvm

    from csra_posthoc import load_model

    marker = tmp_path / "MARKER"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = tvm.get_model_weights("resnet18").DEFAULT.url
    planted = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    planted.parent.mkdir(parents=True)
    planted.write_bytes(evil_torch_save(marker))
    with pytest.raises(CSRAError, match="resnet18"):
        load_model("torchvision:resnet18", pretrained=True)
    assert not marker.exists(), "the planted download ran code"
