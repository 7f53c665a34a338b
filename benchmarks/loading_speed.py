"""Loading speed per dataset format: annotation parsing, then decode + crop/resize per 1,000 samples.

Writes each dataset in its official layout from scikit-image's real photos (JPEGs at typical
sizes: COCO / VOC ~640x480, ImageNet ~500x375, WIDER ~1024x768 with 4 person boxes per image),
then times ``load_dataset`` and one pass of the extraction DataLoader (no model) at 224 px.
Prints the ``csra-posthoc sweep`` command for each fixture. Usage:
python benchmarks/loading_speed.py [--n 1000] [--workers 2] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image
from torch.utils.data import DataLoader

from csra_posthoc import load_dataset
from csra_posthoc.data import ImageDataset
from csra_posthoc.data.fixtures import random_voc_annotations, write_coco, write_wider
from csra_posthoc.data.transforms import eval_transform
from csra_posthoc.models.base import DataConfig


def photos() -> list[Image.Image]:
    from skimage import data

    return [
        Image.fromarray(f()).convert("RGB")
        for f in (data.astronaut, data.chelsea, data.coffee, data.rocket, data.immunohistochemistry)
    ]


def save_photo(pool: list[Image.Image], k: int, path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pool[k % len(pool)].resize(size).save(path, quality=90)


def build(root: Path, n: int) -> dict[str, Path]:
    pool = photos()
    made: dict[str, Path] = {}
    # COCO: n annotated images + 5% empty ones (skipped)
    cats = [{"id": i, "name": f"cat{i}"} for i in (1, 2, 3, 5, 8)]
    ims = [
        {"id": k, "file_name": f"COCO_val2014_{k:012d}.jpg", "width": 640, "height": 480} for k in range(n + n // 20)
    ]
    anns = [{"image_id": k, "category_id": cats[(k * 7 + j) % 5]["id"]} for k in range(n) for j in range(1 + k % 3)]
    write_coco(root / "coco", ims, anns, cats, write_images=False)
    for k, im in enumerate(ims):
        save_photo(pool, k, root / "coco" / "val2014" / im["file_name"], (640, 480))
    made["coco2014"] = root / "coco"
    # WIDER: n boxes, 4 per 1024x768 image
    boxes = [{"bbox": [40 + 230 * j, 60, 200, 600], "attribute": [1, -1, 0] * 4 + [1, -1]} for j in range(4)]
    wider = [{"file_name": f"0--Parade/0_Parade_{k}.jpg", "targets": boxes} for k in range(n // 4)]
    write_wider(root / "wider", wider)
    for k, im in enumerate(wider):
        save_photo(pool, k, root / "wider" / "Image" / im["file_name"], (1024, 768))
    made["wider"] = root / "wider"
    # ImageNet: an ImageFolder of 10 wnids
    from csra_posthoc.data.imagenet import imagenet_wnids

    wnids = imagenet_wnids()[::100]
    for k in range(n):
        save_photo(pool, k, root / "imagenet" / "val" / wnids[k % 10] / f"ILSVRC2012_val_{k:08d}.JPEG", (500, 375))
    made["imagenet"] = root / "imagenet"
    # VOC2007 for comparison
    voc = root / "voc" / "VOCdevkit" / "VOC2007"
    annotations = random_voc_annotations(n)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for k, (image_id, objects) in enumerate(annotations.items()):
        save_photo(pool, k, voc / "JPEGImages" / f"{image_id}.jpg", (500, 375))
        objs = "".join(f"<object><name>{c}</name><difficult>{d}</difficult></object>" for c, d in objects)
        (voc / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objs}</annotation>")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(annotations) + "\n")
    made["voc2007"] = root / "voc"
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    root = args.out_dir or Path(tempfile.mkdtemp(prefix="csra-loading-"))
    made = build(root, args.n)
    cfg = DataConfig()
    for dataset, data_dir in made.items():
        t0 = time.perf_counter()
        images = load_dataset(dataset, data_dir)
        parse = time.perf_counter() - t0
        transform, desc = eval_transform(cfg, 224, images.single_label)
        loader = DataLoader(ImageDataset(images, transform, 224), batch_size=32, num_workers=args.workers)
        t0 = time.perf_counter()
        count = sum(len(index) for index, _, _ in loader)
        load = time.perf_counter() - t0
        print(
            f"{dataset:9s} {count:5d} samples, {len(images.classes):4d} classes | annotations {parse * 1000:7.1f} ms | "
            f"decode+{desc['kind']} {load / count * 1000:6.2f} s per 1,000 ({count / load:6.1f} samples/s, --workers {args.workers})"
        )
    print(f"fixtures in {root}; sweep them with, e.g.")
    for dataset, data_dir in made.items():
        model = "efficientnet_lite0 --pretrained" if dataset == "imagenet" else "resnet10t --random-init --img-size 64"
        print(
            f"  csra-posthoc sweep --model {model} --dataset {dataset} --data-dir {data_dir} --workers {args.workers}"
        )


if __name__ == "__main__":
    main()
