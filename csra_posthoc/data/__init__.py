"""Dataset loaders: each turns a standard on-disk layout into :class:`LabelledImages`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import CSRAError
from ..options import DataOptions
from .base import ImageDataset, LabelledImages, load_rgb
from .coco import load_coco
from .csv_labels import load_csv
from .folder import load_image_folder
from .imagenet import load_imagenet
from .subset import subset
from .voc import VOC_CLASSES, load_voc
from .wider import WIDER_ATTRIBUTES, load_wider

__all__ = [
    "LabelledImages", "ImageDataset", "load_rgb", "load_dataset", "load_voc", "load_csv", "load_coco",
    "load_wider", "load_imagenet", "load_image_folder", "subset", "VOC_CLASSES", "WIDER_ATTRIBUTES", "read_classes",
]  # fmt: skip

DATASETS = ("voc2007", "voc2012", "coco2014", "coco2017", "wider", "imagenet", "folder", "csv")
EVAL_SPLITS = {"voc2007": "test", "voc2012": "val", "coco2014": "val", "coco2017": "val", "wider": "test", "csv": "test"}
TRAIN_SPLITS = {
    "voc2007": "trainval", "voc2012": "train", "coco2014": "train", "coco2017": "train",
    "wider": "trainval", "imagenet": "train", "folder": "train",
}  # fmt: skip


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


def _check_flags(dataset: str, opts: DataOptions) -> None:
    """Refuse flags the dataset would silently ignore."""
    used = {
        "--ann-file": opts.ann_file is not None,
        "--image-dir": opts.image_dir is not None,
        "--keep-empty": opts.keep_empty,
        "--labels": opts.labels is not None,
        "--classes": opts.classes is not None,
        "--difficult": opts.difficult != "ignore",
        "--skip-missing": opts.skip_missing,
    }
    allowed = {
        "voc2007": {"--classes", "--difficult", "--skip-missing"},
        "voc2012": {"--classes", "--difficult", "--skip-missing"},
        "coco2014": {"--ann-file", "--image-dir", "--keep-empty", "--skip-missing"},
        "coco2017": {"--ann-file", "--image-dir", "--keep-empty", "--skip-missing"},
        "wider": {"--ann-file", "--image-dir", "--skip-missing"},
        "imagenet": {"--labels", "--skip-missing"},
        "folder": {"--classes"},
        "csv": {"--labels"},
    }[dataset]
    for flag, given in used.items():
        if given and flag not in allowed:
            raise CSRAError(f"{flag} does not apply to --dataset {dataset} (it takes {', '.join(sorted(allowed)) or 'none of them'})")


def load_dataset(dataset: str, data_dir: str | Path, options: DataOptions | None = None, **overrides) -> LabelledImages:
    """Load ``dataset`` (one of :data:`DATASETS`) from ``data_dir``.

    ``overrides`` are :class:`DataOptions` fields (``load_dataset("coco2014", d, split="train")``).
    """
    opts = replace(options or DataOptions(), **overrides)
    if dataset not in DATASETS:
        raise CSRAError(f"--dataset {dataset}: unknown; choose one of {', '.join(DATASETS)}")
    if opts.difficult not in ("ignore", "positive", "negative"):
        raise CSRAError(f"--difficult {opts.difficult}: choose ignore, positive or negative")
    _check_flags(dataset, opts)
    split = opts.split or EVAL_SPLITS.get(dataset)
    if dataset in ("voc2007", "voc2012"):
        images = load_voc(data_dir, dataset[3:], split, opts.classes, opts.difficult, opts.skip_missing)  # type: ignore[arg-type]
        if dataset == "voc2012" and split == "val":
            images.notes.append("VOC2012: the val split is scored (test labels are not public)")
    elif dataset in ("coco2014", "coco2017"):
        images = load_coco(data_dir, split, dataset[4:], opts.ann_file, opts.image_dir, opts.keep_empty, opts.skip_missing)
    elif dataset == "wider":
        images = load_wider(data_dir, split, opts.ann_file, opts.image_dir, opts.skip_missing)
    elif dataset == "imagenet":
        images = load_imagenet(data_dir, opts.split, opts.labels, opts.skip_missing)
    elif dataset == "folder":
        images = load_image_folder(data_dir, opts.split, opts.classes)
    else:
        if opts.labels is None:
            raise CSRAError("--dataset csv needs --labels FILE.csv (header: path,<class>,...)")
        images = load_csv(data_dir, opts.labels, split)
    if opts.max_images is not None:
        if opts.max_images < 1:
            raise CSRAError(f"--max-images {opts.max_images}: must be >= 1")
        images = subset(images, opts.max_images, opts.subset_seed)
    return images
