"""Any images with a CSV of labels: header ``path,<class>,...``, values 1 / 0 / -1 (unknown)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..errors import CSRAError
from .base import LabelledImages


def load_csv(data_dir: str | Path, labels_file: str | Path, split: str = "test") -> LabelledImages:
    data_dir, labels_file = Path(data_dir), Path(labels_file)
    if not data_dir.is_dir():
        raise CSRAError(f"--data-dir {data_dir}: no such directory")
    if not labels_file.is_file():
        raise CSRAError(f"--labels {labels_file}: no such file")
    with labels_file.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or header[0].strip() != "path" or len(header) < 2:
            raise CSRAError(f"--labels {labels_file}: the header must be 'path,<class>,<class>,...'")
        classes = [c.strip() for c in header[1:]]
        ids, paths, rows = [], [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise CSRAError(f"--labels {labels_file}:{line_no}: {len(row)} fields, the header has {len(header)}")
            try:
                values = [int(v) for v in row[1:]]
            except ValueError:
                raise CSRAError(f"--labels {labels_file}:{line_no}: labels must be 1, 0 or -1") from None
            if any(v not in (1, 0, -1) for v in values):
                raise CSRAError(f"--labels {labels_file}:{line_no}: labels must be 1, 0 or -1")
            path = data_dir / row[0].strip()
            if not path.is_file():
                raise CSRAError(f"--labels {labels_file}:{line_no}: image {path} does not exist")
            ids.append(row[0].strip())
            paths.append(path)
            rows.append(values)
    if not ids:
        raise CSRAError(f"--labels {labels_file}: no rows")
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
