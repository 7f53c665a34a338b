"""Tiny random-init Hugging Face classifiers, one per supported family: for checks and tests.

Built from small configs in memory (no download, a few thousand parameters each); the classifier
and the convolutions are re-initialised so that the identity check and the class ranking mean
something (transformers initialises heads near zero, and the tiny EfficientNet / MobileNetV2 come
out of their init with all-zero features). Needs the ``hf`` extra.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch


def tiny_configs(num_labels: int) -> dict[str, tuple[Any, Any]]:
    """model_type -> (config, *ForImageClassification class), each at 64 px."""
    transformers: Any = importlib.import_module("transformers")  # the hf extra; typed loosely on purpose

    vit = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 64,
        "patch_size": 16,
    }
    return {
        "vit": (transformers.ViTConfig(**vit, num_labels=num_labels), transformers.ViTForImageClassification),
        "deit": (
            transformers.DeiTConfig(**vit, num_labels=num_labels),
            transformers.DeiTForImageClassificationWithTeacher,
        ),
        "beit": (
            transformers.BeitConfig(**vit, num_labels=num_labels, use_mean_pooling=True),
            transformers.BeitForImageClassification,
        ),
        "swin": (
            transformers.SwinConfig(
                image_size=64,
                patch_size=4,
                embed_dim=16,
                depths=[1, 1],
                num_heads=[1, 2],
                window_size=4,
                num_labels=num_labels,
            ),
            transformers.SwinForImageClassification,
        ),
        "convnext": (
            transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=num_labels),
            transformers.ConvNextForImageClassification,
        ),
        "convnextv2": (
            transformers.ConvNextV2Config(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=num_labels),
            transformers.ConvNextV2ForImageClassification,
        ),
        "resnet": (
            transformers.ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=num_labels
            ),
            transformers.ResNetForImageClassification,
        ),
        "regnet": (
            transformers.RegNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, num_labels=num_labels
            ),
            transformers.RegNetForImageClassification,
        ),
        "efficientnet": (
            transformers.EfficientNetConfig(
                image_size=64, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, num_labels=num_labels
            ),
            transformers.EfficientNetForImageClassification,
        ),
        "mobilenet_v2": (
            transformers.MobileNetV2Config(image_size=64, depth_multiplier=0.25, num_labels=num_labels),
            transformers.MobileNetV2ForImageClassification,
        ),
    }


TINY_FAMILIES = (
    "vit",
    "deit",
    "beit",
    "swin",
    "convnext",
    "convnextv2",
    "resnet",
    "regnet",
    "efficientnet",
    "mobilenet_v2",
)


def tiny_hf_model(family: str, num_labels: int = 5, seed: int = 0) -> torch.nn.Module:
    """A random-init model whose classifier is not the near-zero init transformers gives it (so the
    identity and the class ranking mean something)."""
    config, cls = tiny_configs(num_labels)[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "classifier" in name:
                    p.normal_(0, 0.5)
            for m in model.modules():  # tiny EfficientNet / MobileNetV2 come out of their init with all-zero features
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight)
                elif isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
    return model
