"""Vision models: a pretrained CNN's feature extractor + a task's new head, saved as safetensors + JSON.

A vision backbone is named like a text one: a registered entry (weights that ship in a package: ``mobilenet-v2``,
``efficientnet-lite0``), ``torchvision:<name>`` (any torchvision classification model; weights from the torch hub
cache, a local file, or random with ``config_overrides={"pretrained": False}``) or ``timm:<name>`` (any timm model,
if timm is installed). The backbone is cut where the ImageNet classifier begins; the head attaches there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..backbones import BACKBONES
from .images import ImageProcessor

FAMILIES = ("torchvision", "timm", "efficientnet_lite")


def _load_weights(path: str) -> dict:
    """A state dict from safetensors or a torch file read with ``weights_only=True`` (never unpickles code)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here is a bad file
        raise ValueError(f"weights file {path!r} could not be read as a state dict ({type(e).__name__}: "
                         f"{str(e)[:120]}); fix: pass a .safetensors or a plain torch state-dict file") from e
    return state.get("state_dict", state) if isinstance(state, dict) else state


def spec_of(backbone: str, overrides: dict | None) -> dict:
    """Everything needed to build ``backbone`` again: arch, weights file (or None), image size, mean/std, kwargs."""
    kw = dict(overrides or {})
    weights = kw.pop("weights", None)
    pretrained = kw.pop("pretrained", True)
    entry = BACKBONES.get(backbone)
    if entry is not None and entry.modality == "vision":
        spec = {"arch": entry.arch, "image_size": entry.image_size, "mean": list(entry.mean),
                "std": list(entry.std), "stem": list(entry.stem),
                "low_layer": entry.feature_layers[0] if entry.feature_layers else None,
                "feature_layers": list(entry.feature_layers)}
        weights = weights or (entry.locate() if pretrained else None)
        if weights and not os.path.isfile(weights):
            raise ValueError(f"backbone={backbone!r}: weights file {weights!r} is missing; fix: {entry.install}")
    elif isinstance(backbone, str) and backbone.split(":", 1)[0] in FAMILIES and ":" in backbone:
        spec = {"arch": backbone, "image_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        if pretrained and weights is None:
            weights = _default_weights(backbone)
    else:
        raise ValueError(f"backbone={backbone!r} is not a vision backbone; valid: "
                         f"{[n for n, b in BACKBONES.items() if b.modality == 'vision']}, 'torchvision:<name>' or "
                         "'timm:<name>' (e.g. 'torchvision:resnet18')")
    for k in ("image_size", "mean", "std", "low_layer", "feature_layers", "depth"):
        if k in kw:
            spec[k] = kw.pop(k)
    depth = spec.get("depth")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError(f"config_overrides depth={depth!r} must be a positive int: the number of the backbone's "
                         "blocks kept (e.g. 14 of MobileNetV2's 19); fix: pass an int, or leave it out for all")
    return dict(spec, weights=weights, kwargs=kw)


def _default_weights(arch: str) -> str | None:
    family, name = arch.split(":", 1)
    if family == "torchvision":
        import torchvision

        try:
            url = torchvision.models.get_model_weights(name).DEFAULT.url
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"backbone={arch!r}: torchvision has no model {name!r}; valid: "
                             f"{torchvision.models.list_models(torchvision.models)[:12]}...") from e
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        if not os.path.isfile(path):
            raise ValueError(f"backbone={arch!r}: pretrained weights are not in the torch hub cache ({path}); fix: "
                             f"put {os.path.basename(url)} there (from {url}), pass config_overrides={{'weights': "
                             "'<file>'}}, or config_overrides={'pretrained': False} for random initialisation")
        return path
    if family == "timm":
        return "timm-pretrained"  # timm reads its own hub cache (offline if HF_HUB_OFFLINE=1 and cached)
    raise ValueError(f"backbone={arch!r}: pass config_overrides={{'weights': '<file>'}} or {{'pretrained': False}}")


class _LiteTrunk(nn.Module):
    """EfficientNet-Lite's stem and its first ``depth`` blocks: ``extract_features`` cut short (the package has no
    such option). Drop-connect keeps the rate schedule of the whole network."""

    def __init__(self, net: nn.Module, depth: int):
        super().__init__()
        self.total = len(net._blocks)
        net._blocks = net._blocks[:depth]
        del net._conv_head, net._bn1
        self.net = net

    def forward(self, x):
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for idx, block in enumerate(net._blocks):
            rate = (net._global_params.drop_connect_rate or 0.0) * idx / self.total
            x = block(x, drop_connect_rate=rate or None)
        return x


def _check_depth(depth: int, blocks: int, arch: str) -> None:
    if depth > blocks:
        raise ValueError(f"config_overrides depth={depth} but backbone {arch!r} has {blocks} blocks; fix: pass "
                         f"1..{blocks}")


def _cut(blocks: nn.Sequential, depth: int | None, arch: str) -> nn.Sequential:
    if depth is None:
        return blocks
    _check_depth(depth, len(blocks), arch)
    return blocks[:depth]


class _Call(nn.Module):
    """A module's feature method (timm's ``forward_features``, EfficientNet-Lite's ``extract_features``) as forward."""

    def __init__(self, net: nn.Module, method: str):
        super().__init__()
        self.net, self.method = net, method

    def forward(self, x):
        return getattr(self.net, self.method)(x)


def build_features(spec: dict) -> nn.Module:
    """The feature extractor of ``spec``: images (N, 3, S, S) -> feature map (N, C, h, w) (or tokens (N, L, C))."""
    family, name = spec["arch"].split(":", 1)
    kw, weights, depth = spec.get("kwargs", {}), spec.get("weights"), spec.get("depth")
    if family == "torchvision":
        import torchvision

        try:
            model = torchvision.models.get_model(name, weights=None, **kw)
        except (ValueError, TypeError) as e:
            raise ValueError(f"backbone 'torchvision:{name}' could not be built ({e}); fix: check the name "
                             "(torchvision.models.list_models()) and config_overrides") from e
        if weights:
            model.load_state_dict(_load_weights(weights))
        if isinstance(getattr(model, "features", None), nn.Module):  # MobileNet, EfficientNet, VGG, ConvNeXt
            return _cut(model.features, depth, spec["arch"])
        if hasattr(model, "layer4"):  # ResNet, ResNeXt, Wide ResNet
            return _cut(nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2,
                                      model.layer3, model.layer4), depth, spec["arch"])
        raise ValueError(f"backbone 'torchvision:{name}' has neither .features nor .layer4; supported families: "
                         "MobileNet, EfficientNet, VGG, ConvNeXt, ResNet; or use 'timm:<name>'")
    if family == "timm":
        try:
            import timm
        except ImportError as e:
            raise ValueError("backbone 'timm:...' needs timm; fix: pip install timm") from e
        try:
            model = timm.create_model(name, pretrained=weights == "timm-pretrained", num_classes=0, global_pool="",
                                      **kw)
        except Exception as e:  # noqa: BLE001 - unknown name, no cached weights offline
            raise ValueError(f"backbone 'timm:{name}' could not be built ({type(e).__name__}: {str(e)[:160]}); fix: "
                             "check the name (timm.list_models()), pass config_overrides={'weights': '<file>'} or "
                             "{'pretrained': False}") from e
        if weights and weights != "timm-pretrained":
            model.load_state_dict(_load_weights(weights), strict=False)
        if depth is not None:
            raise ValueError(f"config_overrides depth={depth} is not supported for timm backbones ('timm:{name}'); "
                             "fix: pick a shallower timm model by name, or use a torchvision/registered backbone")
        return _Call(model, "forward_features")
    if family == "efficientnet_lite":
        from efficientnet_lite_pytorch import EfficientNet

        # TF's BatchNorm momentum 0.99 is PyTorch's 0.01: running statistics would then take hundreds of steps to
        # leave ImageNet's, and a short fine-tune evaluates badly (mnist_5k at 64 px: 0.25 test accuracy after 2
        # epochs). PyTorch's default 0.1 (batch_norm_momentum=0.9 in this package's TF convention) fits fine-tuning.
        model = EfficientNet.from_name(name, **dict({"batch_norm_momentum": 0.9}, **kw))
        if weights:
            model.load_state_dict(_load_weights(weights))
        del model._fc  # the ImageNet classifier: the task's head replaces it
        if depth is not None:
            _check_depth(depth, len(model._blocks), spec["arch"])
            if depth < len(model._blocks):
                return _LiteTrunk(model, depth)
        return _Call(model, "extract_features")
    raise ValueError(f"arch {spec['arch']!r}: unknown family {family!r}; valid: {list(FAMILIES)}")


class VisionConfig:
    """The JSON side of a vision checkpoint: the backbone spec, the head's size and labels."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "weights"}


class ImageClassifier(nn.Module):
    """Backbone features -> global average pool -> dropout -> ``classifier`` (the new head)."""

    def __init__(self, spec: dict, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = build_features(spec)
        self.config = VisionConfig(**{k: v for k, v in spec.items()}, num_labels=num_labels, dropout=dropout,
                                   model="image-classifier")
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_channels(self.backbone, spec["image_size"]), num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        f = self.backbone(pixel_values)
        pooled = f.mean((2, 3)) if f.ndim == 4 else f.mean(1)  # conv maps (N, C, h, w); tokens (N, L, C)
        return self.classifier(self.dropout(pooled))

    def save_pretrained(self, folder, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1, default=str))


def _keep_output(module: nn.Module, args, output) -> None:
    module.kept_output = output


def _take_kept(backbone: nn.Module, name: str) -> torch.Tensor:
    """The output the forward hook kept on layer ``name`` in the last forward pass (cleared: no stale map survives)."""
    layer = backbone.get_submodule(name)
    out, layer.kept_output = layer.kept_output, None
    return out


@torch.no_grad()
def _dry_run(module: nn.Module, fn, side: int):
    """``fn`` of one zero image of ``side`` pixels with ``module`` in eval mode (its mode restored): how the heads
    learn their input channels."""
    was = module.training
    module.eval()
    try:
        return fn(torch.zeros(1, 3, side, side))
    finally:
        module.train(was)


def _whole(spec: dict, task: str) -> None:
    if spec.get("depth") is not None:
        raise ValueError(f"config_overrides depth={spec['depth']} applies to image classification only: {task} heads "
                         "attach to the backbone's declared feature layers; fix: leave depth out")


class ImageSegmenter(nn.Module):
    """Backbone -> LR-ASPP head (torchvision's, Howard et al., 2019, Searching for MobileNetV3) on the stride-8
    ``low`` feature map and the last (stride-32) one -> per-pixel class logits, upsampled to the input size."""

    def __init__(self, spec: dict, num_labels: int, dropout: float = 0.0):
        from torchvision.models.segmentation.lraspp import LRASPPHead

        super().__init__()
        _whole(spec, "segmentation")
        self.backbone = build_features(spec)
        low = spec.get("low_layer")
        if not low:
            raise ValueError(f"backbone {spec['arch']!r} declares no feature layers, so a segmentation head cannot "
                             "attach; fix: use 'mobilenet-v2' or 'efficientnet-lite0', or pass config_overrides="
                             "{'low_layer': '<name of a stride-8 module in model.backbone>'}")
        self.config = VisionConfig(**spec, num_labels=num_labels, dropout=dropout, model="image-segmenter")
        self.low_layer = low
        # a module-level hook that keeps the output on the module itself: copies of the model (deepcopy, the bf16
        # inference copy) then keep their own outputs, which a closure over ``self`` would not
        self.backbone.get_submodule(low).register_forward_hook(_keep_output)
        low_c, high_c = self._channels(spec["image_size"])
        self.head = LRASPPHead(low_c, high_c, num_labels, inter_channels=128)

    def _features(self, x: torch.Tensor) -> dict:
        high = self.backbone(x)
        return {"low": _take_kept(self.backbone, self.low_layer), "high": high}

    def _channels(self, size: int) -> tuple[int, int]:
        f = _dry_run(self.backbone, self._features, max(64, min(size, 96)))
        return int(f["low"].shape[1]), int(f["high"].shape[1])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.head(self._features(pixel_values))
        return nn.functional.interpolate(out, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)

    save_pretrained = ImageClassifier.save_pretrained


class ObjectDetector(nn.Module):
    """Backbone -> feature pyramid on its declared stride-8/16/32 layers -> Faster R-CNN (Ren et al., 2015; Lin et
    al., 2017, FPN): torchvision's region proposal network and RoI heads, with a slim box head (``box_width``: 256
    instead of torchvision's 1,024-wide one, which costs about 3.5 s per 400 px image a step on 2 CPU cores).

    Inputs are already resized and normalised (the task does it), so torchvision's ``GeneralizedRCNNTransform`` is
    left out; boxes are in input pixels. In training ``forward(pixel_values, targets)`` returns torchvision's loss
    dict; in evaluation a list of {boxes, scores, labels} (label 0 is the background)."""

    def __init__(self, spec: dict, num_labels: int, dropout: float = 0.0, *, channels: int = 128,
                 box_width: int = 256, anchor_sizes=((16, 24), (32, 48), (64, 96), (128, 256)),
                 aspect_ratios=(0.5, 1.0, 2.0), detections_per_image: int = 300, score_threshold: float = 0.05):
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
        from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        super().__init__()
        _whole(spec, "detection")
        layers = list(spec.get("feature_layers") or [])
        if len(layers) < 2:
            raise ValueError(f"backbone {spec['arch']!r} declares no feature layers, so a detection head cannot "
                             "attach; fix: use 'mobilenet-v2' or 'efficientnet-lite0', or pass config_overrides="
                             "{'feature_layers': ['<stride-8 module>', '<stride-16 module>', '<last module>']} (the "
                             "pyramid's last level is always the backbone's output)")
        self.backbone = build_features(spec)
        missing = [n for n in layers[:-1] if n not in dict(self.backbone.named_modules())]
        if missing:
            names = [n for n, _ in self.backbone.named_children()][:8]
            raise ValueError(f"feature_layers names {missing} that backbone {spec['arch']!r} does not have; valid "
                             f"names are model.backbone's modules, e.g. {names}")
        head = dict(channels=channels, box_width=box_width, anchor_sizes=[list(a) for a in anchor_sizes],
                    aspect_ratios=list(aspect_ratios), detections_per_image=detections_per_image,
                    score_threshold=score_threshold)
        self.config = VisionConfig(**spec, num_labels=num_labels, dropout=0.0, model="object-detector", head=head)
        self.hooked = layers[:-1]  # the last level is the backbone's own output
        for name in self.hooked:
            self.backbone.get_submodule(name).register_forward_hook(_keep_output)
        in_channels = self._channels()
        self.fpn = FeaturePyramidNetwork(in_channels, channels, extra_blocks=LastLevelMaxPool())
        levels = len(in_channels) + 1
        sizes = tuple(tuple(a) for a in anchor_sizes)
        if len(sizes) != levels:
            raise ValueError(f"anchor_sizes={anchor_sizes!r} has {len(sizes)} levels but the pyramid has {levels} "
                             f"(one per feature layer, then a pooled one); fix: pass the task option anchor_sizes as "
                             f"{levels} tuples of anchor sides in input pixels")
        if len({len(a) for a in sizes}) != 1:
            raise ValueError(f"anchor_sizes={anchor_sizes!r}: every level needs as many sizes (one RPN head serves "
                             "all levels); fix: e.g. ((16, 24), (32, 48), (64, 96), (128, 256))")
        anchors = AnchorGenerator(sizes, (tuple(aspect_ratios),) * levels)
        self.rpn = RegionProposalNetwork(anchors, RPNHead(channels, anchors.num_anchors_per_location()[0]),
                                         fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
                                         positive_fraction=0.5, pre_nms_top_n={"training": 2000, "testing": 1000},
                                         post_nms_top_n={"training": 1000, "testing": 1000}, nms_thresh=0.7)
        names = [str(i) for i in range(len(in_channels))]
        self.roi_heads = RoIHeads(MultiScaleRoIAlign(names, 7, 2), TwoMLPHead(channels * 49, box_width),
                                  FastRCNNPredictor(box_width, num_labels + 1), fg_iou_thresh=0.5, bg_iou_thresh=0.5,
                                  batch_size_per_image=256, positive_fraction=0.25, bbox_reg_weights=None,
                                  score_thresh=score_threshold, nms_thresh=0.5,
                                  detections_per_img=detections_per_image)

    def _levels(self, x: torch.Tensor) -> dict:
        from collections import OrderedDict

        last = self.backbone(x)
        maps = [_take_kept(self.backbone, name) for name in self.hooked] + [last]
        return OrderedDict((str(i), m) for i, m in enumerate(maps))

    def _channels(self) -> list[int]:
        return [int(m.shape[1]) for m in _dry_run(self.backbone, self._levels, 64).values()]

    def forward(self, pixel_values: torch.Tensor, targets: list[dict] | None = None):
        from torchvision.models.detection.image_list import ImageList

        feats = self.fpn(self._levels(pixel_values))
        images = ImageList(pixel_values, [tuple(pixel_values.shape[-2:])] * len(pixel_values))
        if self.training and targets is None:
            raise ValueError("a detector in training mode needs targets; call model.eval() to predict")
        proposals, rpn_losses = self.rpn(images, feats, targets)
        detections, roi_losses = self.roi_heads(feats, proposals, images.image_sizes, targets)
        return {**rpn_losses, **roi_losses} if self.training else detections

    save_pretrained = ImageClassifier.save_pretrained


MODELS = {"image-classifier": ImageClassifier, "image-segmenter": ImageSegmenter, "object-detector": ObjectDetector}


def feature_channels(features: nn.Module, size: int) -> int:
    """Channels of the feature map, from one small forward pass (families do not agree on where they say it)."""
    out = _dry_run(features, features, max(32, min(size, 64)))
    return int(out.shape[1] if out.ndim == 4 else out.shape[-1])


def load_pretrained(backbone: str, *, num_labels: int, dropout: float | None, config_overrides: dict | None,
                    device: torch.device, image_size: int | None = None, model: str = "image-classifier",
                    head: dict | None = None):
    """(model, processor, image size, source) for a vision ``backbone`` with a freshly initialised head
    (``head``: the head's own options, e.g. a detector's anchor sizes)."""
    spec = spec_of(backbone, config_overrides)
    if image_size:
        spec["image_size"] = int(image_size)
    net = MODELS[model](spec, num_labels, dropout or 0.0, **(head or {})).to(device,
                                                                              memory_format=torch.channels_last)
    processor = ImageProcessor(size=spec["image_size"], mean=tuple(spec["mean"]), std=tuple(spec["std"]),
                               crop=model == "image-classifier")
    return net, processor, spec["image_size"], backbone


def load_saved(path: Path):
    """(model, processor) of a vision checkpoint folder: safetensors + JSON only, never a pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        cfg = json.loads((path / "config.json").read_text())
        pre = json.loads((path / "preprocessor_config.json").read_text())
        spec = {k: cfg[k] for k in ("arch", "image_size", "mean", "std", "kwargs")}
        spec.update({k: cfg[k] for k in ("stem", "low_layer", "feature_layers", "depth") if k in cfg})
        model = MODELS[cfg.get("model", "image-classifier")](dict(spec, weights=None), int(cfg["num_labels"]),
                                                             float(cfg.get("dropout", 0.0)), **cfg.get("head", {}))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(path)!r} could not be read as a vision checkpoint ({type(e).__name__}: "
                         f"{str(e)[:160]}); the files are damaged or incomplete: save the model again") from e
    model.config = VisionConfig(**cfg)
    return model.to(memory_format=torch.channels_last), ImageProcessor.from_dict(pre)


def lora_targets(model: nn.Module) -> list[str]:
    """Backbone layers LoRA adapts: 1x1 convolutions without groups (most of a mobile CNN's weights) and linear
    layers; depthwise and spatial convolutions stay frozen."""
    out = []
    for name, m in model.named_modules():
        if not name.startswith("backbone."):
            continue
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1:
            out.append(name)
        elif isinstance(m, nn.Linear):
            out.append(name)
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> int:
    """Re-estimate BatchNorm running statistics from ``batches`` of inputs (after a weight-space merge, averaged
    statistics no longer describe the averaged weights: Wortsman et al., 2022, Model soups, appendix; the
    REPAIR/"reset BN" recipe). Cumulative averages over every batch; returns the number of BatchNorm layers."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
        m.train()
    try:
        for inputs in batches:
            model(**inputs)
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)
        model.train(was)
    return len(bns)
