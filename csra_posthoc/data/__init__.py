"""Dataset loaders: each turns a standard on-disk layout into :class:`LabelledImages`."""

from __future__ import annotations

from pathlib import Path

from ..errors import CSRAError
from .base import ImageDataset, LabelledImages, load_rgb
from .csv_labels import load_csv
from .voc import VOC_CLASSES, DifficultPolicy, load_voc

__all__ = ["LabelledImages", "ImageDataset", "load_rgb", "load_dataset", "load_voc", "load_csv", "VOC_CLASSES", "read_classes"]

DATASETS = ("voc2007", "voc2012", "csv")


def read_classes(classes: str | None, classes_file: str | Path | None) -> list[str] | None:
    """``--classes a,b,c`` or ``--classes-file`` (one name per line)."""
    if classes and classes_file:
        raise CSRAError("--classes and --classes-file: give one of them, not both")
    if classes:
        names = [c.strip() for c in classes.split(",") if c.strip()]
    elif classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise CSRAError(f"--classes-file {path}: no such file")
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    else:
        return None
    if len(set(names)) != len(names) or not names:
        raise CSRAError("--classes: class names must be non-empty and unique")
    return names


def load_dataset(
    dataset: str,
    data_dir: str | Path,
    split: str | None = None,
    labels: str | Path | None = None,
    classes: list[str] | None = None,
    difficult: DifficultPolicy = "ignore",
) -> LabelledImages:
    """Load ``dataset`` (one of :data:`DATASETS`) from ``data_dir``."""
    if dataset in ("voc2007", "voc2012"):
        year = dataset[3:]
        return load_voc(data_dir, year, split or ("test" if year == "2007" else "val"), classes, difficult)
    if dataset == "csv":
        if labels is None:
            raise CSRAError("--dataset csv needs --labels FILE.csv (header: path,<class>,...)")
        return load_csv(data_dir, labels, split or "test")
    raise CSRAError(f"--dataset {dataset}: unknown; choose one of {', '.join(DATASETS)}")
