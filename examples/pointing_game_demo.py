"""Demo pointing game, image by image (efficientnet_lite0 --pretrained + the demo probe head), until extraction caches the arg-max.

Usage: python examples/pointing_game_demo.py DEMO_VOC2007_DIR PROBE_HEAD.safetensors N_TEST_IMAGES
"""

import sys
from pathlib import Path

import torch

from csra_posthoc.attention import _patched
from csra_posthoc.data.base import load_rgb
from csra_posthoc.data.transforms import build_transform
from csra_posthoc.data.voc import _image_labels, image_boxes
from csra_posthoc.localisation import pointing_game, summary_line

root = Path(sys.argv[1])
head = Path(sys.argv[2])
n = int(sys.argv[3])
p = _patched("efficientnet_lite0", None, True, False, None, head, None, None, None, None, "square")
classes = list(p.classes)
index = {c: i for i, c in enumerate(classes)}
prep = p.config["preprocessing"]
tf = build_transform(prep)
ids = (root / "ImageSets/Main/test.txt").read_text().split()[:n]
L, A, B, S = [], [], [], []
with torch.no_grad():
    for i in ids:
        pil = load_rgb(root / "JPEGImages" / f"{i}.jpg")
        fmap = p.feature_map(tf(pil)[None])
        s = p.head.location_scores(fmap).float()[0]
        grid = tuple(fmap.shape[-2:])
        xml = root / "Annotations" / f"{i}.xml"
        L.append(_image_labels(xml, index, "ignore"))
        A.append(s.argmax(dim=-1).tolist())
        B.append(image_boxes(xml, index))
        S.append(pil.size)
out = pointing_game(L, A, grid, B, S, prep, classes)
print(prep["kind"], grid, summary_line(out))
for c, e in out["pointing_game"]["per_class"].items():
    print(f"  {c}: {100 * e['hit_rate']:.1f} % of {e['pairs']} (chance {100 * e['chance_rate']:.1f} %)")
