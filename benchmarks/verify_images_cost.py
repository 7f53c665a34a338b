"""Cost of ``--verify-images``: the cache key's image part by size+mtime vs by content hash.

Writes N copies of scikit-image's astronaut photo as JPEG (512x512, quality 90) in a
``csv`` dataset, then times ``LabelledImages.fingerprint()`` both ways (best of 3; the files are in
the page cache, as on a second run) and, for scale, decoding the same images once (``load_rgb``),
which every uncached run pays. Prints ms per 1,000 images. Usage:
python -m benchmarks.verify_images_cost [--n 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from csra_posthoc import load_dataset
from csra_posthoc.data.base import load_rgb


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    n = parser.parse_args().n
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = ["path,a"]
        for i in range(n):
            photo.save(root / f"{i:05d}.jpg", quality=90)
            rows.append(f"{i:05d}.jpg,{i % 2}")
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
        images = load_dataset("csv", root, labels=root / "labels.csv")
        size_kb = (root / "00000.jpg").stat().st_size / 1024
        stamp = best_of(lambda: images.fingerprint())
        content = best_of(lambda: images.fingerprint(content=True))
        decode = best_of(lambda: [load_rgb(p) for p in images.paths], repeats=1)
    per_k = 1000 / n * 1000
    print(f"{n} JPEGs of {size_kb:.0f} KB (512x512)")
    print(f"fingerprint, size+mtime:   {stamp * per_k:8.1f} ms per 1,000 images")
    print(f"fingerprint, content hash: {content * per_k:8.1f} ms per 1,000 images ({content / stamp:.1f}x)")
    print(f"decode once (load_rgb):    {decode * per_k:8.1f} ms per 1,000 images (for scale)")


if __name__ == "__main__":
    main()
