"""The dataset registry: one :class:`DatasetEntry` per ``dataset`` name, the only list of datasets.

Adding a dataset is one entry here (its loader module is imported when the dataset is used, so
this module imports neither torch nor torchvision: the CLI lists :data:`DATASET_NAMES` in
``--help`` without paying for them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..defaults import UnknownPolicy
from ..errors import CSRAError
from ..options import DataOptions

if TYPE_CHECKING:
    from .base import LabelledImages

# DataOptions fields a dataset may or may not take; the rest (split, max_images, subset_seed) apply to all
LOADER_OPTIONS = ("ann_file", "image_dir", "keep_empty", "labels", "classes", "difficult", "skip_missing")

Loader = Callable[[Path, "str | None", DataOptions], "LabelledImages"]


@dataclass(frozen=True)
class DatasetEntry:
    """What the rest of the package needs to know about one dataset."""

    name: str
    loader: Loader  # (data_dir, split or None for the loader's own default, options) -> LabelledImages
    eval_split: str | None  # the split scored when none is given (None: the loader decides, e.g. folder's val/)
    train_split: str | None  # the probe's training split (None: the user must name it)
    options: frozenset[str]  # the LOADER_OPTIONS it takes; any other one given is refused
    shares_classes: bool  # the training split is read with the evaluated split's class list (VOC, folder)
    single_label: bool  # one class per image (top-1 / crop protocol) vs multi-label
    unknown: UnknownPolicy  # how a -1 label is scored
    train_needs_labels: bool = False  # its training split is a second label file (csv: train_labels)


def _voc(year: str) -> Loader:
    def load(data_dir: Path, split: str | None, o: DataOptions) -> LabelledImages:
        from .voc import load_voc

        images = load_voc(data_dir, year, split, o.classes, o.difficult, o.skip_missing)  # type: ignore[arg-type]
        if year == "2012" and split == "val":
            images.notes.append("VOC2012: the val split is scored (test labels are not public)")
        return images

    return load


def _coco(year: str) -> Loader:
    def load(data_dir: Path, split: str | None, o: DataOptions) -> LabelledImages:
        from .coco import load_coco

        return load_coco(data_dir, split, year, o.ann_file, o.image_dir, o.keep_empty, o.skip_missing)  # type: ignore[arg-type]

    return load


def _wider(data_dir: Path, split: str | None, o: DataOptions) -> LabelledImages:
    from .wider import load_wider

    return load_wider(data_dir, split, o.ann_file, o.image_dir, o.skip_missing)  # type: ignore[arg-type]


def _imagenet(data_dir: Path, split: str | None, o: DataOptions) -> LabelledImages:
    from .imagenet import load_imagenet

    return load_imagenet(data_dir, split, o.labels, o.skip_missing)


def _folder(data_dir: Path, split: str | None, o: DataOptions) -> LabelledImages:
    from .folder import load_image_folder

    return load_image_folder(data_dir, split, o.classes)


def _csv(data_dir: Path, split: str | None, o: DataOptions) -> LabelledImages:
    from .csv_labels import load_csv

    if o.labels is None:
        raise CSRAError("dataset csv needs labels=FILE.csv (header: path,<class>,...)", param="labels")
    return load_csv(data_dir, o.labels, split or "test")


_VOC_OPTS = frozenset({"classes", "difficult", "skip_missing"})
_COCO_OPTS = frozenset({"ann_file", "image_dir", "keep_empty", "skip_missing"})

REGISTRY: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry("voc2007", _voc("2007"), "test", "trainval", _VOC_OPTS, True, False, "exclude"),
        DatasetEntry("voc2012", _voc("2012"), "val", "train", _VOC_OPTS, True, False, "exclude"),
        DatasetEntry("coco2014", _coco("2014"), "val", "train", _COCO_OPTS, False, False, "exclude"),
        DatasetEntry("coco2017", _coco("2017"), "val", "train", _COCO_OPTS, False, False, "exclude"),
        DatasetEntry("wider", _wider, "test", "trainval", frozenset({"ann_file", "image_dir", "skip_missing"}), False, False, "negative"),
        DatasetEntry("imagenet", _imagenet, None, "train", frozenset({"labels", "skip_missing"}), False, True, "exclude"),
        DatasetEntry("folder", _folder, None, "train", frozenset({"classes"}), True, True, "exclude"),
        DatasetEntry("csv", _csv, "test", None, frozenset({"labels"}), False, False, "exclude", train_needs_labels=True),
    )
}  # fmt: skip

DATASET_NAMES: tuple[str, ...] = tuple(REGISTRY)
SINGLE_LABEL_DATASETS: tuple[str, ...] = tuple(n for n, e in REGISTRY.items() if e.single_label)


def dataset_entry(dataset: str) -> DatasetEntry:
    """The registry entry of ``dataset``; an unknown name is refused in one line."""
    entry = REGISTRY.get(dataset)
    if entry is None:
        raise CSRAError(f"dataset {dataset}: unknown; choose one of {', '.join(DATASET_NAMES)}", param="dataset")
    return entry


def options_given(opts: DataOptions) -> list[str]:
    """The loader options set to something other than their default."""
    given = {
        "ann_file": opts.ann_file is not None,
        "image_dir": opts.image_dir is not None,
        "keep_empty": opts.keep_empty,
        "labels": opts.labels is not None,
        "classes": opts.classes is not None,
        "difficult": opts.difficult != "ignore",
        "skip_missing": opts.skip_missing,
    }
    return [name for name in LOADER_OPTIONS if given[name]]


def check_options(entry: DatasetEntry, opts: DataOptions) -> None:
    """Refuse options the dataset would silently ignore."""
    for name in options_given(opts):
        if name not in entry.options:
            takes = ", ".join(f"`{o}`" for o in sorted(entry.options)) or "none of them"
            raise CSRAError(f"{name} does not apply to dataset={entry.name} (it takes {takes})", param=name)
