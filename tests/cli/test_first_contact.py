"""First contact: an instant CLI, every flag checked before any work, warm cached runs without a
model build, one-line failures (no network, Ctrl-C, unwritable outputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import tomllib
import torch
from typer.testing import CliRunner

import csra_posthoc
import csra_posthoc.cli.app as cli
import csra_posthoc.evaluation.run as api
from csra_posthoc.cli.app import app
from tests.helpers import one_line_error, sweep_argv

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "timm", "torchvision", "sklearn")
runner = CliRunner()
SWEEP = sweep_argv(random_init=None, lams="0,0.2", temps=2, heads=2)


def loaded_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """Heavy modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys; print('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return [m for m in run.stdout.strip().splitlines()[-1].removeprefix("loaded:").split(",") if m]


# --- instant CLI ---------------------------------------------------------------------------


def test_importing_the_cli_imports_no_heavy_library() -> None:
    assert loaded_after("import csra_posthoc.cli.app") == []


def test_package_names_load_lazily() -> None:
    assert loaded_after("import csra_posthoc") == []
    from csra_posthoc.evaluation.grid import sweep

    assert csra_posthoc.sweep is sweep and set(csra_posthoc.__all__) <= set(dir(csra_posthoc))
    with pytest.raises(AttributeError):
        csra_posthoc.no_such_name  # noqa: B018


def test_version_matches_the_package_metadata() -> None:
    res = runner.invoke(app, ["--version"])
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert res.exit_code == 0 and res.output.strip() == f"csra-posthoc {declared}"


@pytest.mark.parametrize("command", ["sweep", "demo"])
def test_help_shows_boolean_flags_as_flags(command: str) -> None:
    res = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0
    assert "--no-cache" in res.output
    assert "<bool>" not in res.output and "BOOLEAN" not in res.output


def test_ctrl_c_before_a_command_starts_is_one_line(monkeypatch, capsys) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 130
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted")


def test_ctrl_c_while_a_command_loads_is_one_line(monkeypatch, voc_dir: Path) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "run_sweep", interrupted)
    res = runner.invoke(app, [*SWEEP, "--random-init", "--data-dir", str(voc_dir)])
    assert res.exit_code == 130 and "interrupted" in res.output and "Traceback" not in res.output


# --- every flag before any work ------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Any model build or dataset read fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("model or data work started before the flags were checked")

    monkeypatch.setattr(api, "load_model", forbidden)
    monkeypatch.setattr(api, "load_dataset", forbidden)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--lams", "0,-0.1"], "--lams -0.1"),
        (["--lams", "nan"], "--lams nan"),
        (["--lams", "inf"], "--lams inf"),
        (["--temps", "0"], "--temps 0"),
        (["--temps", "nan"], "--temps nan"),
        (["--temps", "2.5"], "--keep-maps"),
        (["--heads", "3"], "--heads 3"),
        (["--device", "tpu"], "--device tpu"),
        (["--img-size", "100000"], "--img-size 100000"),
        (["--img-size", "8"], "--img-size 8"),
        (["--metrics", "CF1,F2"], "--metrics F2"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--workers", "-1"], "--workers -1"),
        (["--transform", "zoom"], "--transform zoom"),
        (["--head", "probe", "--probe-c", "0"], "--probe-c 0"),
        (["--head", "probe", "--probe-c", "nan"], "--probe-c nan"),
        (["--head", "linear"], "--head linear"),
        (["--save-head", "h.safetensors"], "--save-head needs --head probe"),
        (["--pretrained"], "exactly one weight source"),
    ],
)
def test_bad_flags_fail_before_any_work(args: list[str], fragment: str, no_work, tmp_path: Path) -> None:
    start = time.perf_counter()
    res = runner.invoke(app, [*SWEEP, "--random-init", "--data-dir", str(tmp_path), *args])
    one_line_error(res, fragment)
    assert time.perf_counter() - start < 10


def test_weight_source_checked_before_any_work(no_work, tmp_path: Path) -> None:
    base = [*SWEEP, "--data-dir", str(tmp_path)]
    one_line_error(runner.invoke(app, base), "exactly one weight source")
    one_line_error(runner.invoke(app, [*base, "--checkpoint", str(tmp_path / "none.pth")]), "no such file")
    one_line_error(runner.invoke(app, [*base, "--checkpoint", str(tmp_path)]), "is a directory")


@pytest.mark.parametrize("flag", ["--out", "--save-scores"])
def test_output_that_is_a_directory_fails_before_any_work(flag: str, no_work, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    res = runner.invoke(app, [*SWEEP, "--random-init", "--data-dir", str(tmp_path), flag, str(tmp_path / "taken")])
    one_line_error(res, flag, "is a directory")


def test_output_under_a_file_fails_before_any_work(no_work, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    res = runner.invoke(
        app, [*SWEEP, "--random-init", "--data-dir", str(tmp_path), "--out", str(tmp_path / "plain" / "r.json")]
    )
    one_line_error(res, "--out", "is a file, not a folder")


def test_output_in_a_read_only_folder_fails_before_any_work(no_work, tmp_path: Path, monkeypatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro else real_access(p, mode, **k))
    res = runner.invoke(app, [*SWEEP, "--random-init", "--data-dir", str(tmp_path), "--save-scores", str(ro / "s.npz")])
    one_line_error(res, "--save-scores", "not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 0o500 folder anyway")
def test_output_in_a_chmod_read_only_folder_fails_before_any_work(no_work, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    res = runner.invoke(app, [*SWEEP, "--random-init", "--data-dir", str(tmp_path), "--out", str(ro / "r.json")])
    one_line_error(res, "--out", "not writable")


def test_tpu_is_refused_even_when_the_statistics_are_cached(voc_dir: Path) -> None:
    base = [*SWEEP, "--random-init", "--data-dir", str(voc_dir)]
    assert runner.invoke(app, base).exit_code == 0
    assert "reused cache" in runner.invoke(app, base).output
    one_line_error(runner.invoke(app, [*base, "--device", "tpu"]), "--device tpu")


# --- warm runs: no model build ---------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    path = tmp_path / "voc_test_resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=20).state_dict(), path)
    return path


def counting_load_model(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = api.load_model
    monkeypatch.setattr(api, "load_model", lambda name, **kw: calls.append(name) or real(name, **kw))
    return calls


def test_warm_run_gives_the_cold_results_without_building_the_model(
    voc_dir: Path, checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = counting_load_model(monkeypatch)
    args = [*SWEEP, "--checkpoint", str(checkpoint), "--data-dir", str(voc_dir), "--metrics", "CF1,OF1"]
    cold = runner.invoke(app, [*args, "--out", str(tmp_path / "cold.json")])
    assert cold.exit_code == 0, cold.output
    warm = runner.invoke(app, [*args, "--out", str(tmp_path / "warm.json")])
    assert warm.exit_code == 0, warm.output
    assert calls == ["test_resnet"] and "no model built" in warm.output
    assert json.loads((tmp_path / "warm.json").read_text()) == json.loads((tmp_path / "cold.json").read_text())


@pytest.mark.parametrize("change", ["mtime", "size"])
def test_a_changed_checkpoint_builds_the_model_again(change: str, voc_dir: Path, checkpoint: Path, monkeypatch) -> None:
    calls = counting_load_model(monkeypatch)
    args = [*SWEEP, "--checkpoint", str(checkpoint), "--data-dir", str(voc_dir)]
    assert runner.invoke(app, args).exit_code == 0
    if change == "mtime":
        st = checkpoint.stat()
        os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    else:  # the same tensors in torch's legacy file format: another size, same mtime
        st = checkpoint.stat()
        torch.save(torch.load(checkpoint, weights_only=True), checkpoint, _use_new_zipfile_serialization=False)
        os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert checkpoint.stat().st_size != st.st_size
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert calls == ["test_resnet", "test_resnet"] and "no model built" not in res.output


@pytest.mark.slow  # end to end (sweep, export or subprocess): the full suite runs it
def test_recompute_and_no_cache_always_build(voc_dir: Path, checkpoint: Path, monkeypatch) -> None:
    calls = counting_load_model(monkeypatch)
    args = [*SWEEP, "--checkpoint", str(checkpoint), "--data-dir", str(voc_dir)]
    for extra in ([], ["--recompute"], ["--no-cache"]):
        assert runner.invoke(app, [*args, *extra]).exit_code == 0
    assert len(calls) == 3


@pytest.mark.slow  # end to end (sweep, export or subprocess): the full suite runs it
def test_warm_run_imports_no_timm_torchvision_or_sklearn(voc_dir: Path, isolated_cache: Path) -> None:
    args = [*SWEEP, "--random-init", "--data-dir", str(voc_dir)]
    assert runner.invoke(app, args).exit_code == 0
    code = f"import sys\nfrom csra_posthoc.cli.app import main\nsys.argv = ['csra-posthoc', *{args!r}]\ntry:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code"
    assert loaded_after(code, {"CSRA_POSTHOC_CACHE": str(isolated_cache)}) == ["torch"]


# --- --pretrained without a network -------------------------------------------------------------


def test_pretrained_without_network_fails_fast_in_one_line(voc_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.perf_counter()
    res = runner.invoke(app, sweep_argv(img_size=None, pretrained=True, data_dir=voc_dir))
    one_line_error(res, "--model test_resnet --pretrained", "HF_HUB_OFFLINE", "pass --checkpoint")
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1
    assert time.perf_counter() - start < 15


def test_hub_probe_gives_up_at_once_on_a_closed_port() -> None:
    from csra_posthoc.models.hub import hub_answers

    start = time.perf_counter()
    assert hub_answers("http://127.0.0.1:9", timeout=2) is False
    assert time.perf_counter() - start < 3


@pytest.mark.slow  # end to end (sweep, export or subprocess): the full suite runs it
def test_warm_probe_run_gives_the_cold_results_and_a_new_training_split_refits(tmp_path: Path, monkeypatch) -> None:
    from csra_posthoc.data.fixtures import random_voc_annotations, write_voc

    test_ann = random_voc_annotations(24, seed=0)
    train_ann = {f"t{k}": v for k, v in random_voc_annotations(24, seed=1).items()}
    write_voc(tmp_path / "d", test_ann, split="test", seed=0)
    voc = write_voc(tmp_path / "d", train_ann, split="trainval", seed=1)
    calls = counting_load_model(monkeypatch)
    args = [*SWEEP, "--random-init", "--head", "probe", "--data-dir", str(tmp_path / "d")]
    cold = runner.invoke(app, [*args, "--out", str(tmp_path / "cold.json")])
    assert cold.exit_code == 0, cold.output
    warm = runner.invoke(app, [*args, "--out", str(tmp_path / "warm.json")])
    assert warm.exit_code == 0, warm.output
    assert len(calls) == 1 and "no model built" in warm.output
    cold_json, warm_json = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("cold", "warm"))
    assert warm_json == cold_json and warm_json["head"].startswith("linear probe on")
    # a training label changes: the probe (and so the head and the statistics) must be redone
    xml = voc / "Annotations" / "t000001.xml"
    xml.write_text(
        xml.read_text().replace(
            "</annotation>",
            "<object><name>sofa</name><difficult>0</difficult></object><object><name>cat</name><difficult>0</difficult></object></annotation>",
        )
    )
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and len(calls) == 2 and "no model built" not in again.output
