"""torchvision adapters (``--model torchvision:resnet50``), built from the module tree."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CSRAError
from ..heads.location import LocationHead
from .base import AdapterInfo, BaselineSource, DataConfig, ModelAdapter, eval_mode, tokens_to_grid
from .nonlinear import NonlinearLocationHead, _info, nonlinear_adapter
from .torchvision_head import GraphPlan, PooledHeadFn, plan_graph


class TorchvisionResNetAdapter(ModelAdapter):
    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        m = self.wrapped
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.wrapped.fc(torch.flatten(self.wrapped.avgpool(raw), 1))


class TorchvisionFeaturesAdapter(ModelAdapter):
    """MobileNetV2 / EfficientNet: ``features`` -> average pool -> ``classifier`` (dropout, linear)."""

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped.features(x)

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.wrapped.classifier(torch.flatten(F.adaptive_avg_pool2d(raw, 1), 1))


class TorchvisionViTAdapter(ModelAdapter):
    """vit_b_16 and friends: encoder output (after its final LayerNorm), class token at index 0."""

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        m = self.wrapped
        x = m._process_input(x)
        cls = m.class_token.expand(x.shape[0], -1, -1)
        return m.encoder(torch.cat([cls, x], dim=1))

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(raw[:, 1:])

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.wrapped.heads(raw[:, 0])


class TorchvisionGraphAdapter(ModelAdapter):
    """Any other torchvision classifier, split at its global average pool (:mod:`.torchvision_head`):
    the traced forward up to the pool is the backbone, the pool and what follows are its logits."""

    _plan: GraphPlan

    def __init__(
        self, model: nn.Module, head: Any, info: AdapterInfo, data_config: DataConfig, plan: GraphPlan
    ) -> None:
        super().__init__(model, head, info, data_config)
        object.__setattr__(self, "_plan", plan)  # not submodules: they call the model's own modules

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self._plan.backbone(x)

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self._plan.tail(raw)


def _data_config(arch: str) -> DataConfig:
    """Input size / normalisation from torchvision's weights metadata when the arch has weights."""
    import torchvision.models as tvm

    try:
        tf = tvm.get_model_weights(arch).DEFAULT.transforms()
        crop = int(tf.crop_size[0])
        return DataConfig(
            input_size=crop,
            mean=tuple(tf.mean),
            std=tuple(tf.std),
            interpolation=str(tf.interpolation.value),
            crop_pct=crop / int(tf.resize_size[0]),
        )
    except Exception:  # no weights registered for this arch: ImageNet defaults
        return DataConfig(interpolation="bilinear")


def _last_linear(classifier: nn.Module, name: str) -> nn.Linear:
    layers = list(classifier) if isinstance(classifier, nn.Sequential) else [classifier]
    *rest, last = layers
    if not isinstance(last, nn.Linear) or not all(isinstance(m, (nn.Dropout, nn.Identity)) for m in rest):
        raise CSRAError(
            f"model {name}: classifier {classifier.__class__.__name__} is not (dropout ->) linear, so it cannot be applied per location"
        )
    return last


def build_torchvision_adapter(model: nn.Module, name: str, arch: str, weights: str) -> ModelAdapter:
    import torchvision.models as tvm

    cfg = _data_config(arch)
    if isinstance(model, tvm.ResNet):
        head = LocationHead.from_linear(model.fc)
        cls: type[ModelAdapter] = TorchvisionResNetAdapter
        source: BaselineSource = "model_logits"
        family = "torchvision-resnet"
    elif isinstance(model, (tvm.MobileNetV2, tvm.EfficientNet)):
        head = LocationHead.from_linear(_last_linear(model.classifier, name))
        cls, source, family = TorchvisionFeaturesAdapter, "model_logits", "torchvision-features"
    elif isinstance(model, tvm.VisionTransformer):
        if hasattr(model.heads, "pre_logits"):
            raise CSRAError(f"model {name}: its head has a tanh pre-logits layer, so it cannot be applied per patch")
        head = LocationHead.from_linear(model.heads.head)
        cls, source, family = TorchvisionViTAdapter, "patch_average", "torchvision-vit"
    elif isinstance(model, (tvm.MobileNetV3, tvm.VGG)):  # non-linear head: the labelled variant
        return nonlinear_adapter(model, name, weights, cfg)
    else:
        return graph_adapter(model, name, weights, cfg)
    info = AdapterInfo(name=name, family=family, baseline_source=source, weights=weights)
    if source == "patch_average":
        info.notes.append("class-token ViT: the baseline is the average of per-patch logits")
    return cls(model, head, info, cfg)


def graph_adapter(model: nn.Module, name: str, weights: str, cfg: DataConfig) -> ModelAdapter:
    """Any torchvision classifier by its traced forward: pool -> (norm ->) affine, or the non-linear variant."""
    with eval_mode(model):
        plan = plan_graph(model, name, cfg.input_size)
    if plan.head is None:
        dim = int(plan.pooled_shape[0])
        first = next(model.parameters(), None)
        with torch.no_grad():
            zeros = torch.zeros(1, *plan.pooled_shape, device=first.device if first is not None else None)
            classes = int(plan.post(zeros).shape[-1])
        what = f"pool -> {type(model).__name__} head"
        head = NonlinearLocationHead(
            model, {"head": plan.post}, PooledHeadFn(plan.post, plan.pooled_shape), classes, dim, what
        )
        info = _info(name, "torchvision-nonlinear", weights, what, plan.nonlinear_reason)
        return TorchvisionGraphAdapter(model, head, info, cfg, plan)
    info = AdapterInfo(name=name, family="torchvision-traced", baseline_source="model_logits", weights=weights)
    if plan.head.pooled_norm:
        info.notes.append("norm after pooling: applied per location with the pooled vector's statistics")
    if plan.folded:
        info.notes.append(f"head after pooling folded into one linear map ({plan.folded})")
    return TorchvisionGraphAdapter(model, plan.head, info, cfg, plan)


# the classifier weight of each torchvision family, to infer num_classes from a checkpoint; an MLP
# head's last layer comes before its hidden ones (MaxViT: 5 before 3, MobileNetV3: 3, ConvNeXt: 2)
TORCHVISION_CLASSIFIER_KEYS = (
    "fc.weight",  # ResNet, RegNet, ShuffleNetV2, GoogLeNet, Inception3
    "classifier.1.weight",  # MobileNetV2, EfficientNet, MNASNet, SqueezeNet (a 1x1 conv)
    "classifier.weight",  # DenseNet
    "heads.head.weight",  # ViT
    "head.weight",  # Swin
    "classifier.5.weight",  # MaxViT
    "classifier.3.weight",  # MobileNetV3
    "classifier.2.weight",  # ConvNeXt
)
