"""Messages name what the user gave: the file a bad setting came from, the flag they typed, never a
Python parameter; problems are said (once) instead of skipped silently or repeated per image / rank."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.cli.flags import FLAGS
from csra_posthoc.data import load_dataset
from csra_posthoc.data.fixtures import random_voc_annotations, write_coco, write_image, write_voc
from csra_posthoc.errors import CSRAError
from csra_posthoc.patched.model import CONFIG_KEY
from tests import dist_scenarios
from tests.helpers import sweep_argv

runner = CliRunner()
MODEL = ["--model", "test_resnet", "--random-init"]
PY_NAMES = re.compile(
    r"(?<![\w\-/.])(" + "|".join(sorted((k for k in FLAGS if "_" in k), key=len, reverse=True)) + r")(?![\w\-/])"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small VOC set, a results JSON from a real sweep on it, and a patched file from apply."""
    root = tmp_path_factory.mktemp("msgs")
    voc = write_voc(root / "voc", random_voc_annotations(8))
    results = root / "r.json"
    res = runner.invoke(app, sweep_argv(data_dir=root / "voc", bootstrap=False, out=results))
    assert res.exit_code == 0, res.output
    patched = root / "p.safetensors"
    res = runner.invoke(app, ["apply", *MODEL, "--lam", "0.1", "--img-size", "64", "--out", str(patched)])
    assert res.exit_code == 0, res.output
    images = [write_image(root / "imgs" / f"i{k}.jpg", (40, 32), seed=k) for k in range(3)]
    return {
        "root": root,
        "voc": root / "voc",
        "voc_root": voc,
        "results": results,
        "patched": patched,
        "image": images[0],
        "images": root / "imgs",
    }


def _error(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    return res.output


def _with_row(files: dict[str, Path], tmp_path: Path, lam: object) -> Path:
    data = json.loads(files["results"].read_text())
    data["best"]["lam"] = lam
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    return bad


@pytest.mark.parametrize("lam", ["abc", -1, None])
def test_a_bad_lam_in_from_results_names_the_file_and_its_row(files, tmp_path: Path, lam: object) -> None:
    bad = _with_row(files, tmp_path, lam)
    out = _error(
        ["apply", *MODEL, "--from-results", str(bad), "--pick", "best", "--out", str(tmp_path / "p.safetensors")]
    )
    line = out.replace("\n", "")
    assert line.startswith(f"error: --from-results {bad}: its 'best' row has lam {lam!r}"), out
    assert "--lam" not in out


def test_a_bad_train_labels_file_is_named_as_train_labels(tmp_path: Path) -> None:
    data = tmp_path / "data"
    labels = tmp_path / "test.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "a", "b"])
        for i in range(4):
            write_image(data / f"t{i}.jpg", (40, 32), seed=i)
            writer.writerow([f"t{i}.jpg", i % 2, 1 - i % 2])
    train = tmp_path / "train.csv"
    train.write_text("path,a,b\nnope.jpg,1,0\n")
    out = _error(
        sweep_argv(img_size=None, dataset="csv", data_dir=data, labels=labels, head="probe", train_labels=train)
    )
    assert out.replace("\n", "").startswith(f"error: --train-labels {train}:2: image "), out
    assert "--labels" not in out


def test_no_python_parameter_name_reaches_the_cli(files, tmp_path: Path) -> None:
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    invocations = [
        sweep_argv(img_size=None, dataset="coco2014", data_dir=missing),
        sweep_argv(img_size=None, dataset="coco2014", data_dir=empty),  # was "data_dir ...: no annotations/..."
        sweep_argv(img_size=None, data_dir=files["voc"], head="probe", ann_file=files["results"]),
        [
            "apply",
            *MODEL,
            "--from-results",
            str(files["results"]),
            "--lam",
            "0.1",
            "--out",
            str(tmp_path / "p.safetensors"),
        ],
        ["apply", *MODEL, "--from-results", str(missing), "--out", str(tmp_path / "p.safetensors")],
        ["apply", *MODEL, "--lam", "0.1", "--head-file", str(missing), "--out", str(tmp_path / "p.safetensors")],
        [
            "apply",
            *MODEL,
            "--from-results",
            str(_with_row(files, tmp_path, "abc")),
            "--out",
            str(tmp_path / "p.safetensors"),
        ],
        ["predict", "--patched", str(missing), str(files["image"])],
        ["predict", "--patched", str(files["patched"]), "--transform", "crop", str(files["image"])],
    ]
    for args in invocations:
        out = _error(args)
        assert out.startswith("error: "), out
        leaked = PY_NAMES.findall(out.replace(str(tmp_path), "").replace(str(files["root"]), ""))
        assert not leaked, f"{args[0]}: Python parameter {leaked} in {out!r}"


def test_coco_file_name_outside_the_image_folder_is_refused(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "../secret.jpg"}]
    ann = write_coco(tmp_path / "coco", images[:1], [{"image_id": 1, "category_id": 1}], [{"id": 1, "name": "x"}])
    write_image(tmp_path / "coco" / "secret.jpg", (40, 32))  # it exists: reading it would succeed
    data = json.loads(ann.read_text())
    for name in ("../secret.jpg", str(tmp_path / "coco" / "secret.jpg")):
        data["images"] = [*data["images"][:1], {"id": 2, "file_name": name, "height": 32, "width": 40}]
        data["annotations"].append(
            {"id": 9, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0}
        )
        ann.write_text(json.dumps(data))
        with pytest.raises(CSRAError) as err:
            load_dataset("coco2014", tmp_path / "coco")
        message = str(err.value)
        assert (
            str(ann) in message and f"images[1].file_name {name!r}" in message and "outside the image folder" in message
        )


def test_wider_file_name_outside_the_image_folder_is_refused(tmp_path: Path) -> None:
    from csra_posthoc.data.fixtures import write_wider

    target = {"bbox": [1, 1, 5, 5], "attribute": [1] * 14}
    ann = write_wider(
        tmp_path / "w",
        [
            {"file_name": "a.png", "size": (20, 24), "targets": [target]},
            {"file_name": "../../x.png", "targets": [target]},
        ],
    )
    with pytest.raises(CSRAError) as err:
        load_dataset("wider", tmp_path / "w")
    assert str(ann) in str(err.value) and "images[1].file_name '../../x.png'" in str(err.value)


def test_quiet_keeps_the_warning_that_the_cache_is_off(files, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = runner.invoke(
        app,
        sweep_argv(data_dir=files["voc"], bootstrap=False, quiet=True, cache_dir=blocker / "cache"),
    )
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "going on without caching" in res.output
    assert "baseline" in res.output  # the table: a result, not chatter
    assert "identity:" not in res.output  # chatter stays quiet


def test_a_symlink_loop_in_a_predicted_folder_is_said(files, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    write_image(folder / "ok.jpg", (40, 32))
    (folder / "loop.jpg").symlink_to("loop.jpg")
    res = runner.invoke(app, ["predict", *MODEL, "--img-size", "64", str(folder)])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "loop.jpg" in ln]
    assert len(lines) == 1 and "warning:" in lines[0] and "symlink loop" in lines[0], res.output
    assert "ok.jpg" in res.output


def test_bad_preprocessing_in_a_patched_file_is_one_error_naming_it(files, tmp_path: Path) -> None:
    with safe_open(str(files["patched"]), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        config = json.loads(fh.metadata()[CONFIG_KEY])
    config["preprocessing"]["mean"] = [0.5, 0.5]  # two channels for an RGB image
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={CONFIG_KEY: json.dumps(config)})
    res = runner.invoke(app, ["predict", "--patched", str(bad), str(files["images"])])
    assert res.exit_code == 2, res.output
    assert res.output.count("error:") == 1 and "cannot decode" not in res.output, res.output
    one = res.output.replace("\n", "")
    assert one.startswith(f"error: --patched {bad}:") and "preprocessing" in one, (
        res.output
    )  # named once, by the config check


@pytest.mark.slow
def test_under_two_ranks_a_shared_error_is_said_once_and_the_bar_counts_every_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_voc(tmp_path / "voc", random_voc_annotations(11))  # shards of 6 and 5 images
    base = sweep_argv(img_size=32, device="cpu", bootstrap=False, select_on="none", cache=False)
    codes, _, printed = dist_scenarios.launch_cli([*base, "--data-dir", str(tmp_path / "missing")], tmp_path / "logs1")
    assert codes == [2, 2]
    assert printed[0][1].count("error:") == 1 and "--data-dir" in printed[0][1]
    assert printed[1] == ("", "")  # rank 1 shares it: rank 0's line says it
    monkeypatch.setenv("FORCE_COLOR", "1")  # the ranks write what a terminal gets: the progress bar
    codes, _, printed = dist_scenarios.launch_cli(
        [*base, "--data-dir", str(tmp_path / "voc"), "--batch-size", "2"], tmp_path / "logs2"
    )
    assert codes == [0, 0], printed
    shown = re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", printed[0][0] + printed[0][1])
    assert "11/11" in shown and "6/6" not in shown, shown  # the whole split, not rank 0's share
    assert "max over 2 ranks" in shown
