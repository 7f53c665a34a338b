"""Issue #20 part 2: no run destroys an input; one output policy for every command (README: Outputs).

Every refusal here comes before any model or data work (``no_work`` fails the test otherwise) and
leaves the input byte for byte as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import csra_posthoc.evaluation.run as api
import csra_posthoc.patched.predict as predict_module
import csra_posthoc.report.compare as compare_module
from csra_posthoc.atomic import atomic_write
from csra_posthoc.cli.app import app
from csra_posthoc.data.fixtures import write_image
from csra_posthoc.errors import CSRAError
from csra_posthoc.options import ExtractOptions, SweepOptions
from tests.helpers import one_line_error, sweep_argv, write_results

runner = CliRunner()
SWEEP = sweep_argv(dataset=None, random_init=None, lams="0,0.2", temps=2, heads=2, bootstrap=False)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_work(monkeypatch):
    """Any model build, dataset read, prediction or results read fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("model or data work started before the outputs were checked")

    monkeypatch.setattr(api, "load_model", forbidden)
    monkeypatch.setattr(api, "load_dataset", forbidden)
    monkeypatch.setattr(predict_module, "patched_from_model", forbidden)
    monkeypatch.setattr(compare_module, "compare_rows", forbidden)


def precious(path: Path, size: int = 4096) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_checkpoint_survives_save_scores_onto_it(no_work, tmp_path: Path) -> None:
    ck = tmp_path / "ck.pth"
    before = precious(ck)
    res = runner.invoke(
        app,
        [
            *SWEEP,
            "--dataset",
            "voc2007",
            "--data-dir",
            str(tmp_path),
            "--checkpoint",
            str(ck),
            "--save-scores",
            str(ck),
        ],
    )
    one_line_error(res, "--save-scores", "is also --checkpoint", "choose another path")
    assert ck.read_bytes() == before


def test_labels_csv_survives_out_onto_it(no_work, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    before = precious(labels)
    res = runner.invoke(
        app,
        [
            *SWEEP,
            "--random-init",
            "--dataset",
            "csv",
            "--data-dir",
            str(tmp_path),
            "--labels",
            str(labels),
            "--out",
            str(labels),
        ],
    )
    one_line_error(res, "--out", "is also --labels")
    assert labels.read_bytes() == before


def test_one_path_for_two_outputs_is_refused(no_work, tmp_path: Path) -> None:
    r = tmp_path / "r.json"
    res = runner.invoke(
        app,
        [
            *SWEEP,
            "--random-init",
            "--dataset",
            "voc2007",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(r),
            "--save-scores",
            str(r),
        ],
    )
    one_line_error(res, "--save-scores", "is also --out", "its own path")


def test_symlinked_and_hard_linked_outputs_onto_inputs_are_refused(no_work, tmp_path: Path) -> None:
    ck = tmp_path / "ck.pth"
    before = precious(ck)
    (tmp_path / "link.npz").symlink_to(ck)
    os.link(ck, tmp_path / "hard.npz")
    base = [*SWEEP, "--dataset", "voc2007", "--data-dir", str(tmp_path), "--checkpoint", str(ck)]
    for name in ("link.npz", "hard.npz"):
        one_line_error(
            runner.invoke(app, [*base, "--save-scores", str(tmp_path / name)]), "--save-scores", "is also --checkpoint"
        )
    # two outputs that are one file through a symlink
    (tmp_path / "alias.npz").symlink_to(tmp_path / "r.json")
    args = [
        "--random-init",
        "--dataset",
        "voc2007",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "r.json"),
        "--save-scores",
        str(tmp_path / "alias.npz"),
    ]
    one_line_error(runner.invoke(app, [*SWEEP, *args]), "--save-scores", "is also --out")
    assert ck.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--out", "{tmp}/r.txt"], ["--out", ".json"]),
        (["--save-scores", "{tmp}/s.json"], ["--save-scores", ".npz"]),
        (["--save-scores", "{tmp}/s"], ["--save-scores", ".npz"]),
        (
            ["--head", "probe", "--train-split", "trainval", "--save-head", "{tmp}/h.pth"],
            ["--save-head", ".safetensors"],
        ),
    ],
)
def test_sweep_outputs_need_their_documented_suffix(
    no_work, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one_line_error(
        runner.invoke(app, [*SWEEP, "--random-init", "--dataset", "voc2007", "--data-dir", str(tmp_path), *args]),
        *fragments,
    )


def test_predict_json_needs_json_suffix_and_is_not_an_image(no_work, tmp_path: Path) -> None:
    img = write_image(tmp_path / "a.png", (40, 32))
    before = img.read_bytes()
    base = ["predict", str(tmp_path), "--model", "test_resnet", "--random-init"]
    one_line_error(runner.invoke(app, [*base, "--json", str(img)]), "--json", "is also IMAGE")
    one_line_error(runner.invoke(app, [*base, "--json", str(tmp_path / "p.csv")]), "--json", ".json")
    assert img.read_bytes() == before


def test_predict_json_in_unwritable_folder_fails_before_work(no_work, tmp_path: Path, monkeypatch) -> None:
    img = write_image(tmp_path / "a.png", (40, 32))
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro else real_access(p, mode, **k))
    res = runner.invoke(
        app, ["predict", str(img), "--model", "test_resnet", "--random-init", "--json", str(ro / "p.json")]
    )
    one_line_error(res, "--json", "not writable")


@pytest.mark.parametrize(("flag", "name"), [("--csv", "t.csv"), ("--markdown", "t.md"), ("--latex", "t.tex")])
def test_compare_output_in_unwritable_folder_fails_before_work(
    no_work, tmp_path: Path, monkeypatch, flag: str, name: str
) -> None:
    write_results(tmp_path / "a.json", "m", "d", 0)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro else real_access(p, mode, **k))
    one_line_error(
        runner.invoke(app, ["compare", str(tmp_path / "a.json"), flag, str(ro / name)]), flag, "not writable"
    )


def test_compare_never_writes_over_a_results_file_it_reads(tmp_path: Path) -> None:
    write_results(tmp_path / "a.json", "m", "d", 0)
    before = (tmp_path / "a.json").read_bytes()
    one_line_error(
        runner.invoke(app, ["compare", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "a.json")]),
        "--markdown",
        "is also RESULTS",
    )
    one_line_error(
        runner.invoke(app, ["compare", str(tmp_path / "a.json"), "--csv", str(tmp_path / "t.md")]), "--csv", ".csv"
    )
    one_line_error(
        runner.invoke(
            app,
            ["compare", str(tmp_path / "a.json"), "--csv", str(tmp_path / "t.csv"), "--latex", str(tmp_path / "t.csv")],
        ),
        "--latex",
        "is also --csv",
    )
    assert (tmp_path / "a.json").read_bytes() == before


def test_apply_out_onto_its_from_results_or_checkpoint_is_refused(tmp_path: Path) -> None:
    ck = tmp_path / "ck.safetensors"
    before = precious(ck)
    res = runner.invoke(
        app, ["apply", "--model", "test_resnet", "--checkpoint", str(ck), "--lam", "0.2", "--out", str(ck)]
    )
    one_line_error(res, "--out", "is also --checkpoint")
    assert ck.read_bytes() == before


def test_attention_out_onto_its_image_is_refused(tmp_path: Path) -> None:
    img = write_image(tmp_path / "a.png", (40, 32))
    before = img.read_bytes()
    one_line_error(
        runner.invoke(app, ["attention", str(img), "--model", "test_resnet", "--random-init", "--out", str(img)]),
        "--out",
        "is also IMAGE",
    )
    assert img.read_bytes() == before


def test_classes_file_is_never_an_output(no_work, tmp_path: Path) -> None:
    names = tmp_path / "classes.json"
    before = precious(names)
    res = runner.invoke(
        app,
        [
            *SWEEP,
            "--random-init",
            "--dataset",
            "voc2007",
            "--data-dir",
            str(tmp_path),
            "--classes-file",
            str(names),
            "--out",
            str(names),
        ],
    )
    one_line_error(res, "--out", "is also --classes-file")
    assert names.read_bytes() == before


def test_an_image_of_the_dataset_is_never_an_output(tmp_path: Path, monkeypatch) -> None:
    """An output inside --data-dir is fine, unless it is one of the files the run reads: refused
    once the file list is known, before the model is built."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was built before the outputs were checked against the images")

    monkeypatch.setattr(api, "load_model", forbidden)
    data = tmp_path / "data"
    for i in range(4):
        write_image(data / f"img{i}.png", (40, 32), seed=i)
    (data / "labels.csv").write_text("path,a,b\n" + "".join(f"img{i}.png,{i % 2},{1 - i % 2}\n" for i in range(4)))
    before = (data / "img0.png").read_bytes()
    base = [*SWEEP, "--random-init", "--dataset", "csv", "--data-dir", str(data), "--labels", str(data / "labels.csv")]
    one_line_error(
        runner.invoke(app, [*base, "--plot", str(data / "img0.png")]),
        "--plot",
        "is one of the files read from --data-dir",
    )
    assert (data / "img0.png").read_bytes() == before


def test_threads_are_bounded_in_one_line(no_work, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            *SWEEP,
            "--random-init",
            "--dataset",
            "voc2007",
            "--data-dir",
            str(tmp_path),
            "--threads",
            "100000",
            "--no-cache",
        ],
    )
    bound = max(64, 4 * (os.cpu_count() or 1))
    one_line_error(res, "--threads 100000", f"at most {bound}")
    with pytest.raises(CSRAError, match="threads 0: must be >= 1"):
        ExtractOptions(threads=0)
    assert ExtractOptions(threads=bound).threads == bound


def test_bootstrap_is_bounded_and_the_limit_is_named(no_work, tmp_path: Path) -> None:
    args = [a for a in SWEEP if a != "--no-bootstrap"]
    res = runner.invoke(
        app, [*args, "--random-init", "--dataset", "voc2007", "--data-dir", str(tmp_path), "--bootstrap", "10000000"]
    )
    one_line_error(res, "--bootstrap 10000000", "at most 1000000")
    assert SweepOptions(bootstrap=1_000_000).bootstrap == 1_000_000


def test_an_existing_output_is_replaced_by_apply_without_force(tmp_path: Path) -> None:
    out = tmp_path / "p.safetensors"
    out.write_text("old")
    base = ["apply", "--model", "test_resnet", "--random-init", "--lam", "0.2", "--img-size", "64", "--out", str(out)]
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:3] != b"old"
    assert runner.invoke(app, [*base, "--force"]).exit_code == 0  # still accepted
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == ["p.safetensors"]


WRITER = """
import sys, time
from pathlib import Path
from csra_posthoc.atomic import atomic_write
def write(tmp):
    Path(tmp).write_bytes(b"")
    Path(sys.argv[2]).write_text(tmp)
    time.sleep(120)
atomic_write(sys.argv[1], write)
"""


def _writer_mid_write(out: Path, ready: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(ready)], env=env)
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the writer never started"
    return child, Path(ready.read_text())


def test_a_killed_writers_temporary_is_cleaned_by_the_next_run_a_live_ones_is_kept(tmp_path: Path) -> None:
    from csra_posthoc.atomic import remove_stale_temps
    from csra_posthoc.outputs import check_outputs

    out = tmp_path / "model.safetensors"
    live, live_tmp = _writer_mid_write(out, tmp_path / "ready-live")
    dead, dead_tmp = _writer_mid_write(out, tmp_path / "ready-dead")
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=30)
        assert dead_tmp.exists() and dead_tmp.name.startswith(".model.safetensors.") and dead_tmp.stat().st_size == 0
        unrelated = tmp_path / ".notes.tmp"
        unrelated.write_text("someone else's")
        check_outputs({"out": out})  # a later run: checks its outputs, then writes
        atomic_write(out, lambda tmp: Path(tmp).write_text("new"))
        assert not dead_tmp.exists()
        assert live_tmp.exists()  # a live run's temporary is left alone
        assert unrelated.exists()
        assert out.read_text() == "new"
    finally:
        live.kill()
        live.wait(timeout=30)
    assert remove_stale_temps(tmp_path) == [live_tmp]


@pytest.mark.slow
def test_real_weights_predict_json_onto_its_photo_is_refused_and_json_is_replaced(tmp_path: Path) -> None:
    """efficientnet_lite0 --pretrained on a real photo: --json onto the photo is refused; an existing JSON is replaced."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    photo = tmp_path / "coffee.png"
    Image.fromarray(skdata.coffee()).save(photo)
    before = photo.read_bytes()
    base = ["predict", str(photo), "--model", "efficientnet_lite0", "--pretrained", "--top-k", "3"]
    one_line_error(runner.invoke(app, [*base, "--json", str(photo)]), "--json", "is also IMAGE")
    assert photo.read_bytes() == before
    out = tmp_path / "p.json"
    out.write_text("old")
    res = runner.invoke(app, [*base, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().lstrip().startswith("[") and "coffee" in out.read_text()
