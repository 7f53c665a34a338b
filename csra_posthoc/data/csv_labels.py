"""Any images with a CSV of labels: header ``path,<class>,...``, values 1 / 0 / -1 (unknown).

Refused with the line number (the header is line 1): an image listed twice (it would count
twice in every metric), an empty or repeated class name (the per-class results are keyed by
name). A UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..errors import CSRAError
from .base import LabelledImages


def load_csv(data_dir: str | Path, labels_file: str | Path, split: str = "test") -> LabelledImages:
    data_dir, labels_file = Path(data_dir), Path(labels_file)
    if not data_dir.is_dir():
        raise CSRAError(f"data_dir {data_dir}: no such directory", param="data_dir")
    if not labels_file.is_file():
        raise CSRAError(f"labels {labels_file}: no such file", param="labels")
    try:
        with labels_file.open(newline="", encoding="utf-8-sig") as fh:
            ids, paths, rows, classes = _read_rows(csv.reader(fh), data_dir, labels_file)
    except UnicodeDecodeError:
        raise CSRAError(f"labels {labels_file}: not UTF-8 text; save it as CSV UTF-8", param="labels") from None
    if not ids:
        raise CSRAError(f"labels {labels_file}: no rows", param="labels")
    return LabelledImages(
        dataset="csv",
        split=split,
        root=data_dir,
        ids=ids,
        paths=paths,
        labels=torch.tensor(rows, dtype=torch.int8),
        classes=classes,
        options={"labels_file": str(labels_file.resolve())},
    )


def _read_rows(reader, data_dir: Path, labels_file: Path) -> tuple[list[str], list[Path], list[list[int]], list[str]]:
    header = next(reader, None)
    if not header or header[0].strip() != "path" or len(header) < 2:
        raise CSRAError(f"labels {labels_file}: the header must be 'path,<class>,<class>,...'", param="labels")
    classes = [c.strip() for c in header[1:]]
    seen_class: dict[str, int] = {}
    for column, name in enumerate(classes, start=2):
        if not name:
            raise CSRAError(f"labels {labels_file}:1: column {column} has no class name", param="labels")
        if name in seen_class:
            raise CSRAError(
                f"labels {labels_file}:1: class {name!r} is in columns {seen_class[name]} and {column}; class names must be unique"
            )
        seen_class[name] = column
    ids, paths, rows = [], [], []
    seen_image: dict[Path, int] = {}
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise CSRAError(
                f"labels {labels_file}:{line_no}: {len(row)} fields, the header has {len(header)}", param="labels"
            )
        try:
            values = [int(v) for v in row[1:]]
        except ValueError:
            raise CSRAError(f"labels {labels_file}:{line_no}: labels must be 1, 0 or -1", param="labels") from None
        if any(v not in (1, 0, -1) for v in values):
            raise CSRAError(f"labels {labels_file}:{line_no}: labels must be 1, 0 or -1", param="labels")
        path = data_dir / row[0].strip()
        if not path.is_file():
            raise CSRAError(f"labels {labels_file}:{line_no}: image {path} does not exist", param="labels")
        same = path.resolve()
        if same in seen_image:
            raise CSRAError(
                f"labels {labels_file}:{line_no}: image {row[0].strip()} already listed on line {seen_image[same]}; list each image once"
            )
        seen_image[same] = line_no
        ids.append(row[0].strip())
        paths.append(path)
        rows.append(values)
    return ids, paths, rows, classes
