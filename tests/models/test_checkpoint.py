"""Local checkpoints: wrappers, prefixes, safetensors, weights-only, class-count inference, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch
import torchvision.models as tvm
from safetensors.torch import save_file

from csra_posthoc import CSRAError, load_model
from csra_posthoc.models.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def resnet_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=7).state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix", "safetensors"])
def test_checkpoint_formats_load_and_infer_num_classes(tmp_path: Path, resnet_sd, wrap: str) -> None:
    path = tmp_path / ("w.safetensors" if wrap == "safetensors" else "w.pth")
    if wrap == "safetensors":
        save_file({k: v.contiguous() for k, v in resnet_sd.items()}, str(path))
    else:
        obj = {
            "plain": resnet_sd,
            "state_dict": {"state_dict": resnet_sd, "epoch": 3},
            "model": {"model": resnet_sd},
            "module_prefix": {f"module.{k}": v for k, v in resnet_sd.items()},
        }[wrap]
        torch.save(obj, path)
    adapter = load_model("test_resnet", checkpoint=path)
    assert adapter.num_classes == 7
    assert torch.equal(adapter.head.weight, resnet_sd["fc.weight"])
    assert adapter.info.weights == f"checkpoint:{path}"


@pytest.mark.slow
def test_torchvision_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sd = tvm.resnet18(num_classes=3).state_dict()
    torch.save(sd, tmp_path / "r18.pth")
    assert load_model("torchvision:resnet18", checkpoint=tmp_path / "r18.pth").num_classes == 3


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"fc.weight": NotATensor()}, fh)
    with pytest.raises(CSRAError, match="weights only"):
        read_checkpoint(path)


def test_checkpoint_errors_are_one_line(tmp_path: Path, resnet_sd) -> None:
    with pytest.raises(CSRAError, match="no such file"):
        load_model("test_resnet", checkpoint=tmp_path / "missing.pth")
    torch.save(resnet_sd, tmp_path / "r.pth")
    with pytest.raises(CSRAError, match="does not fit model efficientnet_lite0|no classifier weight"):
        load_model("efficientnet_lite0", checkpoint=tmp_path / "r.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CSRAError) as info:
        load_model("test_resnet", checkpoint=tmp_path / "junk.pth")
    assert "\n" not in str(info.value)


def test_first_line_handles_empty_and_multiline_messages() -> None:
    from csra_posthoc.errors import first_line

    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(ValueError("  top line\nsecond")) == "top line"
    assert first_line(OSError("x" * 500), 10) == "x" * 10 + "…"  # one long word: cut inside, marked


def test_first_line_cuts_at_a_word_boundary_and_strips_ansi() -> None:
    from csra_posthoc.errors import first_line

    words = "Weights only load failed because the checkpoint holds an object of an unsupported class " * 3
    cut = first_line(RuntimeError(words), 60)
    assert cut.endswith("…") and len(cut) <= 61
    assert words.startswith(cut[:-1]) and words[len(cut) - 1] == " "  # the cut falls between words
    assert first_line(RuntimeError("\x1b[1mWeightsUnpickler error:\x1b[0m bad")) == "WeightsUnpickler error: bad"
    sentences = "The archive is damaged. " + "It was probably cut short while being copied over a network. " * 3
    assert (
        first_line(RuntimeError(sentences), 100)
        == "The archive is damaged. It was probably cut short while being copied over a network."
    )


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "\x1b" not in msg
    return msg


@pytest.mark.parametrize("damage", ["truncated", "random_bytes"])
def test_corrupt_safetensors_is_one_line(tmp_path: Path, resnet_sd, damage: str) -> None:
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in resnet_sd.items()}, str(path))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else bytes(range(256)) * 4)
    with pytest.raises(CSRAError) as info:
        read_checkpoint(path)
    assert "not a readable .safetensors file" in _one_line(info) and "download or save it again" in str(info.value)


def test_directory_checkpoint_is_called_a_directory(tmp_path: Path) -> None:
    (tmp_path / "ckpt.pth").mkdir()
    with pytest.raises(CSRAError, match=r"ckpt.pth: is a directory, not a checkpoint file"):
        read_checkpoint(tmp_path / "ckpt.pth")


@pytest.mark.parametrize("zip_format", [True, False])
def test_truncated_pth_message_ends_cleanly(tmp_path: Path, resnet_sd, zip_format: bool) -> None:
    path = tmp_path / "w.pth"
    torch.save(resnet_sd, path, _use_new_zipfile_serialization=zip_format)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CSRAError) as info:
        read_checkpoint(path)
    msg = _one_line(info)
    assert "damaged or truncated (" in msg and msg.endswith("); download or save it again")
    quoted = msg[msg.index("(") + 1 : msg.rindex(")")]
    assert quoted.endswith((".", "…")), quoted  # a whole sentence, or a visible cut


def test_pickled_model_is_named_as_such(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=3), tmp_path / "full.pth")
    with pytest.raises(CSRAError) as info:
        read_checkpoint(tmp_path / "full.pth")
    msg = _one_line(info)
    assert "holds a pickled model object (timm.models.resnet.ResNet), not a state_dict" in msg
    assert "save model.state_dict() or .safetensors" in msg and "add_safe_globals" not in msg


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("resnet_nope", "unknown timm model; list them with"),
        ("resnt10t", "unknown timm model; did you mean resnet10t"),
        ("resnet10t.nope", "no pretrained tag 'nope' for resnet10t; known: resnet10t.c3_in1k"),
    ],
)
def test_unknown_timm_model_with_checkpoint_is_one_line(
    tmp_path: Path, resnet_sd, voc_dir: Path, name: str, fragment: str
) -> None:
    from typer.testing import CliRunner

    from csra_posthoc.cli.app import app
    from tests.helpers import one_line_error, sweep_argv

    torch.save(resnet_sd, tmp_path / "r.pth")
    res = CliRunner().invoke(
        app, sweep_argv(img_size=None, model=name, checkpoint=tmp_path / "r.pth", data_dir=voc_dir)
    )
    one_line_error(res, f"--model {name}", fragment)


@pytest.mark.parametrize("ema_key", ["state_dict_ema", "model_ema"])
def test_ema_weights_are_preferred_and_reported(tmp_path: Path, resnet_sd, ema_key: str) -> None:
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in resnet_sd.items()}
    path = tmp_path / "train.pth"
    torch.save({"state_dict": resnet_sd, ema_key: {f"module.{k}": v for k, v in ema.items()}, "epoch": 9}, path)
    adapter = load_model("test_resnet", checkpoint=path)
    assert torch.equal(adapter.head.weight, ema["fc.weight"])  # EMA, its DDP prefix removed (timm's clean_state_dict)
    assert any("EMA weights" in n and ema_key in n for n in adapter.info.notes), adapter.info.notes


def test_raw_weights_are_reported_when_there_is_no_ema(tmp_path: Path, resnet_sd) -> None:
    torch.save({"state_dict": resnet_sd, "epoch": 3}, tmp_path / "w.pth")
    torch.save(resnet_sd, tmp_path / "bare.pth")
    assert read_checkpoint(tmp_path / "w.pth")[1] == "state_dict" and read_checkpoint(tmp_path / "bare.pth")[1] is None
    assert load_model("test_resnet", checkpoint=tmp_path / "w.pth").info.notes == [
        "checkpoint: weights from its 'state_dict' entry"
    ]
    assert load_model("test_resnet", checkpoint=tmp_path / "bare.pth").info.notes == []
