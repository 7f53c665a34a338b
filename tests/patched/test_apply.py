"""`csra-posthoc apply`: each exported format reproduces the sweep's scores for the row it was applied from.

Per family (timm CNN, class-token ViT, torchvision CNN): sweep with --save-scores, apply
--from-results, then run the *file* (loaded as a user without this package would: onnxruntime,
torch.jit.load, torch.export.load; safetensors via load_patched) on the same images with the
preprocessing stored in its config, and compare with the NPZ row to 1e-4.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.data import load_dataset, load_rgb
from csra_posthoc.data.transforms import TransformSpec, build_transform
from csra_posthoc.patched.export import exported_config, run_exported
from tests.helpers import apply_argv, sweep_argv

runner = CliRunner()
FAMILIES = {"timm-cnn": "test_resnet", "timm-vit": "vit_tiny_patch16_224", "torchvision": "torchvision:resnet18"}
FORMATS = [
    "safetensors",
    pytest.param("ts", marks=pytest.mark.slow),  # TorchScript: scripting the patched model takes a second
    pytest.param("pt2", marks=pytest.mark.slow),
    pytest.param("onnx", marks=pytest.mark.slow),
]


def one_line_error(res, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert "error:" in text
    for f in fragments:
        assert f in text, (f, res.output)


class _Sweeps(dict):
    """One sweep per family on a 24-image VOC fixture, run when a test first asks for the family
    (so `-m "not slow"` pays only for the families it tests): (data dir, results.json, scores.npz)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, family: str) -> tuple[Path, Path, Path]:
        from csra_posthoc.data.fixtures import random_voc_annotations, write_voc

        data = self.root / "data"
        if not data.exists():
            write_voc(data, random_voc_annotations(24))
        results, scores = self.root / f"{family}.json", self.root / f"{family}.npz"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CSRA_POSTHOC_CACHE", str(self.root / "cache"))
            res = runner.invoke(
                app,
                sweep_argv(
                    model=FAMILIES[family],
                    data_dir=data,
                    lams="0,0.3,0.9",
                    temps="",
                    heads="",
                    out=results,
                    save_scores=scores,
                ),
            )
        assert res.exit_code == 0, res.output
        self[family] = (data, results, scores)
        return self[family]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict[str, tuple[Path, Path, Path]]:
    return _Sweeps(tmp_path_factory.mktemp("apply"))


def _dataset_batch(data: Path, preprocessing: TransformSpec) -> tuple[list[str], torch.Tensor]:
    images = load_dataset("voc2007", data)
    transform = build_transform(preprocessing)
    return images.ids, torch.stack([transform(load_rgb(p)) for p in images.paths])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "family",
    ["timm-cnn", pytest.param("timm-vit", marks=pytest.mark.slow), pytest.param("torchvision", marks=pytest.mark.slow)],
)
def test_exported_file_reproduces_the_sweep_row(swept, tmp_path: Path, family: str, fmt: str) -> None:
    data, results, scores = swept[family]
    arrays = np.load(scores, allow_pickle=False)
    for pick in ("fixed", "best"):
        out = tmp_path / f"patched-{pick}.{fmt}"
        res = runner.invoke(app, apply_argv(FAMILIES[family], results, out, "--random-init", pick=pick))
        assert res.exit_code == 0, res.output
        config = exported_config(out)
        assert config.lam == json.loads(results.read_text())[pick]["lam"]
        assert config.classes == list(arrays["classes"])
        ids, x = _dataset_batch(data, config.preprocessing)
        assert ids == list(arrays["ids"])
        got = run_exported(out, x).numpy()
        assert got.shape == arrays[pick].shape
        assert np.abs(got - arrays[pick]).max() <= 1e-4 * max(1.0, np.abs(arrays[pick]).max()), (family, fmt, pick)
    assert json.loads(results.read_text())["fixed"]["lam"] > 0  # a non-trivial row was reproduced


def test_every_variant_matches_the_sweeps_statistics(voc_dir: Path, tmp_path: Path) -> None:
    """softmax and multi-head rows too: the patched head and the cached statistics score alike."""
    from csra_posthoc import extract, load_model
    from csra_posthoc.evaluation.grid import row_scores
    from csra_posthoc.evaluation.results import SweepRow, Variant
    from csra_posthoc.patched.model import patch

    adapter = load_model("test_resnet", random_init=True, num_classes=20)
    images = load_dataset("voc2007", voc_dir)
    stats = extract(adapter, images, img_size=64, use_cache=False)
    x = torch.stack([build_transform(stats.info.transform)(load_rgb(p)) for p in images.paths])
    for variant, kwargs in (
        (Variant("softmax", temperature=3.0), {"temperature": 3.0}),
        (Variant("heads", heads=6), {"heads": 6}),
        (Variant("max"), {}),
    ):
        expected = row_scores(stats, SweepRow(variant, 0.7, {}, torch.zeros(0)))
        with torch.no_grad():
            got = patch(adapter, lam=0.7, preprocessing=stats.info.transform, **kwargs)(x)
        assert torch.allclose(got, expected, atol=1e-5), variant


def test_apply_with_explicit_settings_writes_the_config(tmp_path: Path) -> None:
    out = tmp_path / "p.safetensors"
    res = runner.invoke(
        app,
        [
            "apply",
            "--model",
            "test_resnet",
            "--random-init",
            "--num-classes",
            "3",
            "--lam",
            "0.3",
            "--heads",
            "4",
            "--img-size",
            "96",
            "--classes",
            "cat,dog,cow",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    config = exported_config(out)
    assert config.heads == 4 and config.temperatures == (1.0, 2.0, 4.0, math.inf) and config.lam == 0.3
    assert config.preprocessing.size == 96 and config.classes == ["cat", "dog", "cow"]
    assert config.identity_max_abs_diff < 1e-4
    assert "max abs diff" in res.output


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--lam", "0.2", "--out", "{tmp}/p.pkl"], ["--out", ".pkl", ".onnx"]),
        (["--lam", "-0.1", "--out", "{tmp}/p.onnx"], ["--lam"]),
        (["--lam", "nan", "--out", "{tmp}/p.onnx"], ["--lam"]),
        (["--lam", "0.2", "--temperature", "0", "--out", "{tmp}/p.onnx"], ["--temperature"]),
        (["--lam", "0.2", "--temperature", "-1", "--out", "{tmp}/p.onnx"], ["--temperature"]),
        (["--lam", "0.2", "--heads", "3", "--out", "{tmp}/p.onnx"], ["--heads 3", "1, 2, 4, 6, 8"]),
        (["--out", "{tmp}/p.onnx"], ["--lam", "--from-results"]),
        (["--lam", "0.2", "--out", "{tmp}"], ["--out", "directory"]),
    ],
)
def test_bad_apply_flags_fail_in_one_line(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one_line_error(runner.invoke(app, ["apply", "--model", "test_resnet", "--random-init", *args]), *fragments)


@pytest.mark.slow
def test_unsupported_family_is_named(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["apply", "--model", "torchvision:vgg11", "--random-init", "--lam", "0.2", "--out", str(tmp_path / "p.onnx")],
    )
    one_line_error(res, "torchvision:vgg11", "no per-location form")


@pytest.mark.slow  # duplicates tests/cli/test_trust_outputs.py::test_an_existing_output_is_replaced_by_apply_without_force (fast, 64 px)
def test_existing_out_is_replaced_force_still_accepted(tmp_path: Path) -> None:
    """README: Outputs: every command replaces an existing output atomically; --force is no longer needed."""
    out = tmp_path / "p.safetensors"
    out.write_text("precious")
    base = ["apply", "--model", "test_resnet", "--random-init", "--lam", "0.2", "--out", str(out)]
    assert runner.invoke(app, base).exit_code == 0
    assert out.read_bytes()[:8] != b"precious"
    assert runner.invoke(app, [*base, "--force"]).exit_code == 0
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temporary file left behind


def test_from_results_of_another_model_weights_or_class_list_is_refused(swept, tmp_path: Path) -> None:
    _, results, _ = swept["timm-cnn"]
    out = str(tmp_path / "p.safetensors")
    res = runner.invoke(
        app,
        apply_argv("resnet14t", results, out, "--random-init", "--num-classes", "20", pick=None),
    )
    one_line_error(res, "measured on model test_resnet", "not resnet14t")
    torch.manual_seed(1)
    torch.save(timm.create_model("test_resnet", num_classes=20).state_dict(), tmp_path / "other.pth")
    res = runner.invoke(
        app,
        apply_argv("test_resnet", results, out, "--checkpoint", str(tmp_path / "other.pth"), pick=None),
    )
    one_line_error(res, "other weights", "fingerprint")
    res = runner.invoke(
        app,
        apply_argv(
            "test_resnet",
            results,
            out,
            "--random-init",
            "--num-classes",
            "20",
            "--classes",
            ",".join(f"c{i}" for i in range(20)),
            pick=None,
        ),
    )
    one_line_error(res, "class list")
    res = runner.invoke(
        app,
        apply_argv("test_resnet", results, out, "--random-init", "--num-classes", "20", "--lam", "0.3", pick=None),
    )
    one_line_error(res, "--from-results", "--lam")
    assert not Path(out).exists()


@pytest.mark.slow  # end to end (sweep, export or subprocess): the full suite runs it
def test_results_from_a_probe_need_its_head(tmp_path: Path, fresh_voc_dir: Path) -> None:
    from csra_posthoc.data.fixtures import random_voc_annotations, write_voc

    train = {f"t{k}": v for k, v in random_voc_annotations(24, seed=1).items()}  # other images than the test split's
    write_voc(fresh_voc_dir, train, split="trainval", seed=1)
    results, head = tmp_path / "r.json", tmp_path / "head.safetensors"
    res = runner.invoke(
        app,
        sweep_argv(head="probe", data_dir=fresh_voc_dir, lams="0,0.5", temps="", heads="", out=results, save_head=head),
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "p.safetensors"
    # no --head-file: the probe the results name is found by their head fingerprint (issue 24), and said
    res = runner.invoke(
        app, ["apply", "--model", "test_resnet", "--random-init", "--from-results", str(results), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "(found by the results' head fingerprint)" in " ".join(res.output.split())
    res = runner.invoke(
        app,
        apply_argv("test_resnet", results, out, "--random-init", "--head-file", str(head)),
    )
    assert res.exit_code == 0, res.output
    config = exported_config(out)
    assert config.head == "probe" and config.preprocessing.kind == "square-resize" and len(config.classes) == 20
    assert math.isclose(config.lam, 0.02)
