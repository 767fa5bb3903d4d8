"""Export one network (a member or a soup: a single Finetuner) to ONNX, with what a runtime needs beside it.

    out/model.onnx        inputs -> class probabilities (softmax inside the graph), dynamic batch and length
    out/model.int8.onnx   with ``int8=True`` (text): the same graph with int8 weights (dynamic quantisation)
    out/tokenizer.json    the fast tokenizer (text), read by the `tokenizers` package alone
    out/preprocess.json   image models: input size, mean, std (RGB, 0-1 scaled) and resize rule
    out/export.json       labels, input names, max length / image size, pad id, versions
    out/example.py        a twenty-line script that predicts with onnxruntime and tokenizers (or PIL) only

The graph is traced from the fp32 model in eval mode (eager attention) through the task's own ``logits``, so mean
pooling and the head are inside it; ``export`` checks ONNX Runtime's probabilities against torch's on real inputs
(max absolute difference <= ``atol``, 1e-4 by default) and refuses to leave a model that disagrees.

``int8=True`` also writes ``model.int8.onnx``: ONNX Runtime's dynamic quantisation (int8 weights, activations
quantised per call; MatMul and Gather ops), about 4x smaller and faster on a CPU (bench/serve.py: 1.3x the fp32
export's speed for one review on an AVX2 EPYC, 2.4x tunefuse's fp32 torch path). It cannot match torch to 1e-4, so
it is checked on real rows instead (``check_texts``: the run's validation texts, with ``check_labels``): the share of
rows whose predicted label agrees with the fp32 model, and both accuracies; below ``min_agreement`` nothing is written.
``export.json``'s ``model`` names the file ``example.py`` runs (the int8 one when written).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_folder

TEXT_EXAMPLE = '''"""Predict with the exported model (onnxruntime, tokenizers): python example.py "great dress" ..."""
import json, sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

here = Path(__file__).resolve().parent
meta = json.loads((here / "export.json").read_text())
tok = Tokenizer.from_file(str(here / "tokenizer.json"))
tok.enable_truncation(meta["max_length"])
tok.enable_padding(pad_id=meta["pad_id"])
texts = sys.argv[1:] or ["I love this dress, it fits perfectly", "poor quality, sent it back"]
enc = tok.encode_batch([meta["template"].format(text=t) if meta["template"] else t for t in texts])
feeds = {"input_ids": np.array([e.ids for e in enc], np.int64),
         "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}
if "token_type_ids" in meta["inputs"]:
    feeds["token_type_ids"] = np.array([e.type_ids for e in enc], np.int64)
proba = ort.InferenceSession(str(here / meta["model"])).run(None, feeds)[0]
for text, p in zip(texts, proba):
    print(f"{meta['labels'][int(p.argmax())]}\\t{p.max():.3f}\\t{text}")
'''

IMAGE_EXAMPLE = '''"""Predict with the exported model (onnxruntime, numpy, PIL): python example.py image.png ..."""
import json, sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

here = Path(__file__).resolve().parent
meta = json.loads((here / "export.json").read_text())
pre = json.loads((here / "preprocess.json").read_text())
size = pre["size"]


def load(path):  # RGB; shorter side to size, centre crop (or the whole image); 0-1; normalised; channels first
    im = Image.open(path).convert("RGB")
    if pre["crop"]:
        s = size / min(im.size)
        im = im.resize((max(size, round(im.width * s)), max(size, round(im.height * s))), Image.BILINEAR)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
    rgb = np.asarray(im.resize((size, size), Image.BILINEAR), np.float32) / 255
    return ((rgb - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)).transpose(2, 0, 1)


batch = np.stack([load(p) for p in sys.argv[1:]])
proba = ort.InferenceSession(str(here / meta["model"])).run(None, {"pixel_values": batch})[0]
for path, p in zip(sys.argv[1:], proba):
    print(f"{meta['labels'][int(p.argmax())]}\\t{p.max():.3f}\\t{path}")
'''


class _Probabilities(torch.nn.Module):
    """The task's logits of a model, softmaxed: the graph ONNX gets."""

    def __init__(self, task, model, pooling: str, names: list[str]):
        super().__init__()
        self.task, self.model, self.pooling, self.names = task, model, pooling, names

    def forward(self, *tensors):
        inputs = dict(zip(self.names, tensors))
        return torch.softmax(self.task.logits(self.model, inputs, self.pooling).float(), -1)


def _fp32_copy(est):
    """A float32 eval copy of a fitted Finetuner's network with eager attention (traceable)."""
    import copy

    model = copy.deepcopy(est.model_).float().eval()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "_attn_implementation"):
        config._attn_implementation = "eager"
    return model


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def text_tokenizer(tokenizer_json, meta: dict):
    """The export's tokenizer.json, set up exactly as example.py does (tokenizers alone)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(meta["max_length"])
    tok.enable_padding(pad_id=meta["pad_id"])
    return tok


def text_proba(sess, tok, meta: dict, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Probabilities of an exported text model (``sess``: its onnxruntime session, ``tok``: ``text_tokenizer``)."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok.encode_batch([meta["template"].format(text=t) if meta["template"] else t
                                for t in texts[i:i + batch_size]])
        feeds = {"input_ids": np.array([e.ids for e in enc], np.int64),
                 "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}
        if "token_type_ids" in meta["inputs"]:
            feeds["token_type_ids"] = np.array([e.type_ids for e in enc], np.int64)
        out.append(sess.run(None, feeds)[0])
    return np.concatenate(out)


def _quantize_int8(tmp: Path, meta: dict, texts: list[str], labels, min_agreement: float) -> dict:
    """model.onnx -> model.int8.onnx (ONNX Runtime's dynamic quantisation), checked on ``texts`` against fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model.int8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True)
    tok = text_tokenizer(tmp / "tokenizer.json", meta)
    p32 = text_proba(_session(tmp / "model.onnx"), tok, meta, texts)
    p8 = text_proba(_session(tmp / "model.int8.onnx"), tok, meta, texts)
    agree = float((p32.argmax(1) == p8.argmax(1)).mean())
    check = {"rows": len(texts), "label_agreement": agree, "max_abs_diff": float(np.abs(p32 - p8).max()),
             "min_agreement": min_agreement,
             "size_mb": round((tmp / "model.int8.onnx").stat().st_size / 2**20, 1),
             "fp32_size_mb": round((tmp / "model.onnx").stat().st_size / 2**20, 1)}
    if labels is not None:
        names = np.asarray(meta["labels"])
        y = np.asarray([str(v) for v in labels])
        check["fp32_accuracy"] = float((names[p32.argmax(1)] == y).mean())
        check["int8_accuracy"] = float((names[p8.argmax(1)] == y).mean())
    if agree < min_agreement:
        raise ValueError(f"the int8 model agrees with fp32 on {agree:.1%} of {len(texts)} rows (< min_agreement="
                           f"{min_agreement}); nothing was written; fix: export without --int8, or lower "
                           "--min-agreement if that accuracy is acceptable")
    return check


def export_onnx(est, out, *, texts=None, images=None, atol: float = 1e-4, opset: int = 17, int8: bool = False,
                check_texts=None, check_labels=None, min_agreement: float = 0.97) -> dict:
    """Write ``est`` (a fitted Finetuner: a member or a soup) to the folder ``out``; returns the check's figures
    (with ``int8``: the int8 check under the key ``"int8"``).

    ``texts`` / ``images``: real inputs for the torch-vs-ONNX check (default: a few built-in sentences; images are
    required for image models). ``int8``: also write the int8 model, checked on ``check_texts`` (real rows, e.g. the
    validation texts; required) with their ``check_labels`` (optional)."""
    from .finetuner import Finetuner
    from .runs.folder import versions

    if not isinstance(est, Finetuner):
        raise ValueError(f"export writes one network; {type(est).__name__} combines several models' outputs; fix: "
                         "export one of its members or a soup (uniform_soup, greedy_soup), whose weights are one model")
    task = est.task_
    if not task.is_classifier or task.modality not in ("text", "vision"):
        raise ValueError(f"export supports sentence and image classification today; task={task.name!r} is not yet "
                         "exportable; fix: serve it with `tunefuse serve` (torch) instead")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "export.json").is_file())):
        raise ValueError(f"--out {str(out)!r} exists and is not an earlier export (no export.json); an export "
                         "replaces its folder whole; fix: pass a new or empty folder")
    if int8 and task.modality != "text":
        raise ValueError("--int8 is for text models (dynamic quantisation of the MatMuls); a convolutional image "
                         "model needs static quantisation with calibration images, which export does not do yet; "
                         "fix: export it without --int8")
    if int8 and not check_texts:
        raise ValueError("export(int8=True) needs check_texts=... (real rows, e.g. the validation texts) to check the "
                         "int8 model against fp32; fix: pass them")
    if not 0 <= min_agreement <= 1:
        raise ValueError(f"min_agreement={min_agreement!r} must be a share between 0 and 1; fix: e.g. 0.97")
    model = _fp32_copy(est)
    labels = [str(c) for c in est.labels_]
    meta = {"format": "tunefuse.export/1", "task": task.name, "labels": labels, "versions": versions(),
            "backbone": str(est.backbone), "opset": opset, "model": "model.onnx"}
    if task.modality == "text":
        texts = list(texts or ["I love this dress, it fits perfectly", "poor quality, sent it back",
                               "ok", "the colour is lovely but the sizing runs very small, order one size up"])
        tok = est.tokenizer_
        if not getattr(tok, "is_fast", False):
            raise ValueError("export needs a fast (Rust) tokenizer to write tokenizer.json; this backbone's is slow; "
                             "fix: use a backbone with a tokenizer.json")
        batch = tok([est.template.format(text=t) if est.template else t for t in texts], padding=True,
                    truncation=True, max_length=est.max_length_, return_tensors="pt")
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in batch]
        args = tuple(batch[n] for n in names)
        dynamic = {n: {0: "batch", 1: "length"} for n in names}
        meta.update(inputs=names, max_length=int(est.max_length_), pad_id=int(tok.pad_token_id or 0),
                    template=est.template, pooling=est.pooling_)
    else:
        if images is None:
            raise ValueError("export of an image model needs images=... (a few real inputs) for the torch-vs-ONNX "
                             "check; fix: pass some validation images")
        from .vision.images import ImageProcessor

        proc = est.tokenizer_
        if not isinstance(proc, ImageProcessor):
            raise ValueError(f"export: this image model's processor is a {type(proc).__name__}, not tunefuse's "
                             "ImageProcessor; fix: refit it with this version of tunefuse")
        pixels = proc.normalize(proc(list(images))).contiguous()
        names, args = ["pixel_values"], (pixels,)
        dynamic = {"pixel_values": {0: "batch"}}
        meta.update(inputs=names, image_size=int(pixels.shape[-1]))
    wrapper = _Probabilities(task, model, getattr(est, "pooling_", "native"), names).eval()
    with torch.no_grad():
        expected = wrapper(*args).numpy()
    with atomic_folder(out) as tmp:
        with torch.no_grad():
            torch.onnx.export(wrapper, args, str(tmp / "model.onnx"), input_names=names, output_names=["proba"],
                              dynamic_axes={**dynamic, "proba": {0: "batch"}}, opset_version=opset, dynamo=False)
        sess = _session(tmp / "model.onnx")
        got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})[0]
        diff = float(np.abs(got - expected).max())
        if diff > atol:
            raise RuntimeError(f"the ONNX model disagrees with torch by {diff:.2e} (> atol={atol}); nothing was "
                               "written")
        meta["check"] = {"max_abs_diff": diff, "rows": int(len(expected)), "atol": atol}
        if task.modality == "text":
            est.tokenizer_.backend_tokenizer.save(str(tmp / "tokenizer.json"))
            (tmp / "example.py").write_text(TEXT_EXAMPLE)
            if int8:
                meta["int8"] = _quantize_int8(tmp, meta, [str(t) for t in check_texts], check_labels,
                                              min_agreement)
                meta["model"] = "model.int8.onnx"
        else:
            spec = {"size": meta["image_size"], "mean": list(proc.mean), "std": list(proc.std), "crop": proc.crop,
                    "resize": "shorter side to size (antialiased), then the centre size x size crop" if proc.crop
                    else "the whole image to size x size (antialiased)", "channels": "RGB, scaled to 0-1"}
            (tmp / "preprocess.json").write_text(json.dumps(spec, indent=2))
            (tmp / "example.py").write_text(IMAGE_EXAMPLE)
        (tmp / "export.json").write_text(json.dumps(meta, indent=2))
    return {**meta["check"], **({"int8": meta["int8"]} if int8 else {})}
