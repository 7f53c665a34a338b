"""Python parameter -> CLI flag: the one table the CLI uses to name a flag in a library error.

Library errors name the parameter (``CSRAError("img_size 5: ...", param="img_size")``); the CLI
prints ``--img-size 5: ...`` instead (:func:`cli_message`). Torch-free, imported by the CLI.
A test checks that every ``param=`` used in the package has an entry here.
"""

from __future__ import annotations

import re

FLAGS: dict[str, str] = {
    # model and weights
    "model": "--model",
    "checkpoint": "--checkpoint",
    "pretrained": "--pretrained",
    "random_init": "--random-init",
    "num_classes": "--num-classes",
    # probe
    "head": "--head",
    "train_split": "--train-split",
    "train_labels": "--train-labels",
    "probe_c": "--probe-c",
    "c": "--probe-c",  # fit_probe(c=...)
    "save_head": "--save-head",
    "head_file": "--head-file",
    "save_examples": "--save-examples",
    # data
    "dataset": "--dataset",
    "data_dir": "--data-dir",
    "split": "--split",
    "labels": "--labels",
    "classes": "--classes",
    "classes_file": "--classes-file",
    "difficult": "--difficult",
    "ann_file": "--ann-file",
    "image_dir": "--image-dir",
    "keep_empty": "--keep-empty",
    "skip_missing": "--skip-missing",
    "max_images": "--max-images",
    "subset_seed": "--subset-seed",
    # extraction
    "img_size": "--img-size",
    "batch_size": "--batch-size",
    "workers": "--workers",
    "device": "--device",
    "amp": "--amp",
    "amp_dtype": "--amp-dtype",
    "keep_maps": "--keep-maps",
    "cache_dir": "--cache-dir",
    "use_cache": "--no-cache",
    "recompute": "--recompute",
    "transform": "--transform",
    "verify_images": "--verify-images",
    "decode": "--decode",
    "backend": "--backend",
    "compile": "--compile",
    "threads": "--threads",
    "cache_dtype": "--cache-dtype",
    "test_pool": "--test-pool",
    "train_size": "--train-size",
    # sweep
    "lams": "--lams",
    "temps": "--temps",
    "heads": "--heads",
    "metrics": "--metrics",
    "fixed_lam": "--fixed-lam",
    # outputs
    "out": "--out",
    "save_scores_to": "--save-scores",
    "force": "--force",
    # apply / predict
    "lam": "--lam",
    "temperature": "--temperature",
    "from_results": "--from-results",
    "pick": "--pick",
    "patched_file": "--patched",
    "threshold": "--threshold",
    "top_k": "--top-k",
    "compare": "--compare",
    "json_out": "--json",
    "images": "IMAGES",
    # uncertainty, figures, compare
    "n": "--bootstrap",  # bootstrap.check_resamples(n)
    "bootstrap": "--bootstrap",  # SweepOptions.bootstrap
    "seed": "--seed",
    "select_on": "--select-on",
    "plot": "--plot",
    "image": "IMAGE",
    "paths": "RESULTS",
    "csv_out": "--csv",
    "markdown_out": "--markdown",
    "latex_out": "--latex",
    # per-class effect, ImageNet-ReaL (csra_posthoc.evaluation.per_class, csra_posthoc.data.real_labels)
    "per_class": "--per-class",
    "plot_classes": "--plot-classes",
    "real_labels": "--real-labels",
    # models (csra_posthoc.models.catalog)
    "pattern": "PATTERN",
    "check": "--check",
    "all_models": "--all",
    "max_params": "--max-params",
    # demo
    "num_train": "--num-train",
    "num_test": "--num-test",
}

_QUOTED = re.compile(r"`([a-z_]+)`")  # a parameter named mid-message: `skip_missing`
# names with an underscore are no English words: every bare one outside a path or identifier is a parameter
_BARE = re.compile(r"(?<![\w\-/.\\'\"])(" + "|".join(sorted((re.escape(k) for k in FLAGS if "_" in k), key=len, reverse=True)) + r")(?![\w\-/'\"])")
_ASSIGNMENT = re.compile(r"(?<![\w-])([a-z_]+)=('[^']*'|\"[^\"]*\"|[^\s,;:)]+)")


def cli_message(message: str, param: str | None) -> str:
    """``message`` in CLI terms: its first mention of ``param`` becomes the flag, every
    ``name=value`` of a known parameter becomes ``--flag value`` (``--flag`` for ``=True``), and
    every known parameter in backquotes (`` `split` ``) becomes its flag."""
    if param in FLAGS and FLAGS[param] not in message:  # a message may already name the flag
        message = re.sub(rf"(?<![\w-]){re.escape(param)}(?![\w=])", FLAGS[param], message, count=1)

    def flag(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2).strip("'\"")
        if name not in FLAGS:
            return match.group(0)
        return FLAGS[name] if value == "True" else f"{FLAGS[name]} {value}"

    message = _ASSIGNMENT.sub(flag, message)
    message = _QUOTED.sub(lambda m: FLAGS.get(m.group(1), m.group(0)), message)
    # a Python parameter named bare (`from_results FILE: ...`, "under data_dir") never reaches the CLI
    return _BARE.sub(lambda m: FLAGS[m.group(1)], message)
