"""Image classification on real pretrained CNNs (MobileNetV2, EfficientNet-Lite0) and real MNIST digits, at 32 px."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tunefuse import Finetuner
from tunefuse.datasets import digit_scenes, load_mnist_5k
from tunefuse.fusion import EnsembleSelection, Voting, WeightFusion
from tunefuse.fusion import weights as W
from tunefuse.tasks import get_task
from tunefuse.vision import as_images, image_folder, read_image_csv
from tunefuse.vision.images import ImageProcessor, decode

TASK = dataclasses.replace(get_task("image-classification"), image_size=32)
KW = dict(task=TASK, batch_size=32, verbose=0)


@pytest.fixture(scope="module")
def digits():
    """300 real training digits and 200 test digits (stratified: 30 and 20 a class)."""
    return load_mnist_5k(n_train=300, n_test=200, seed=0)


@pytest.fixture(scope="module")
def fitted(digits):
    """Members shared by the tests: two MobileNetV2 seeds (full fine-tune) and one EfficientNet-Lite0."""
    Xtr, ytr, _, _ = digits
    out = {f"mnv2_{s}": Finetuner("mobilenet-v2", "full", epochs=3, random_state=s, early_stopping=False,
                                  **KW).fit(Xtr, ytr) for s in (0, 1)}
    out["lite0"] = Finetuner("efficientnet-lite0", "full", epochs=2, early_stopping=False, **KW).fit(Xtr, ytr)
    return out


def test_mnist_split_is_stratified_although_the_file_is_sorted():
    Xtr, ytr, Xte, yte = load_mnist_5k()
    assert Xtr.shape == (2000, 28, 28) and Xte.shape == (3000, 28, 28) and Xtr.dtype == np.uint8
    assert np.bincount(ytr).tolist() == [200] * 10 and np.bincount(yte).tolist() == [300] * 10


def test_inputs_of_every_kind_decode_to_the_same_rgb_tensor(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgba = np.dstack([np.stack([grey] * 3, -1), np.full((20, 24), 255, np.uint8)])
    sources = [grey, grey[:, :, None], np.stack([grey] * 3, -1), np.stack([grey] * 3, 0), Image.fromarray(grey),
               Image.fromarray(rgba, "RGBA"), str(tmp_path / "g.png"), grey.astype(np.float32) / 255]
    out = ImageProcessor(size=16)(as_images(sources))
    assert out.shape == (len(sources), 3, 16, 16) and out.dtype == torch.uint8
    for t in out[1:]:
        assert (t.int() - out[0].int()).abs().max() <= 1  # float round trip may differ by one grey level


def test_transparent_pixels_become_white():
    rgba = np.zeros((8, 8, 4), np.uint8)  # black, fully transparent
    assert decode(rgba, 8).min() == 255


def test_image_folder_and_csv_of_paths(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (10, 10), (i * 50, 0, 0)).save(tmp_path / "photos" / c / f"{i}.png")
    (tmp_path / "photos" / "notes.txt").write_text("not a class")
    paths, labels = image_folder(tmp_path / "photos")
    assert len(paths) == 4 and labels.tolist() == ["cat", "cat", "dog", "dog"]
    (tmp_path / "list.csv").write_text("file,kind\nphotos/cat/0.png,cat\nphotos/dog/1.png,dog\n")
    p, y = read_image_csv(tmp_path / "list.csv", path_column="file", label_column="kind")
    assert y.tolist() == ["cat", "dog"] and all(s.startswith(str(tmp_path)) for s in p)
    with pytest.raises(ValueError, match="no column 'path'.*columns are \\['file', 'kind'\\]"):
        read_image_csv(tmp_path / "list.csv")


@pytest.mark.parametrize("make, match", [
    (lambda d: d / "bad.png", "could not be decoded.*bad.png"),
    (lambda d: d / "missing.png", "missing.png.*does not exist"),
])
def test_a_bad_file_is_named_and_nothing_is_fitted(tmp_path, make, match):
    (tmp_path / "bad.png").write_text("this is not an image")
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    ft = Finetuner("mobilenet-v2", "head", **KW)
    with pytest.raises(ValueError, match=match):
        ft.fit([str(tmp_path / "ok.png"), str(make(tmp_path))], [0, 1])
    assert not hasattr(ft, "model_")


def test_bad_image_inputs_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="shape \\(5, 5, 7\\)"):
        as_images([np.zeros((5, 5, 7))])
    with pytest.raises(ValueError, match="empty"):
        as_images([])
    with pytest.raises(TypeError, match="single path.*image_folder"):
        as_images(str(tmp_path))
    (tmp_path / "only" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "only" / "a" / "x.png")
    with pytest.raises(ValueError, match="1 class sub-folder.*at least 2"):
        image_folder(tmp_path / "only")
    with pytest.raises(ValueError, match="task='image-classification'"):
        Finetuner("mobilenet-v2", "full", task="image-classification", template="{text}!").fit(
            [np.zeros((8, 8))] * 2, [0, 1])


@pytest.mark.parametrize("strategy", ["full", "head", pytest.param("lp-ft", marks=pytest.mark.slow),
                                      pytest.param("lora", marks=pytest.mark.slow)])
def test_every_strategy_learns_digits(digits, fitted, strategy):
    Xtr, ytr, Xte, yte = digits
    ft = fitted["mnv2_0"] if strategy == "full" else Finetuner("mobilenet-v2", strategy, epochs=2, **KW).fit(Xtr, ytr)
    acc = ft.score(Xte, yte)
    assert acc > (0.2 if strategy == "lora" else 0.4), (strategy, acc)  # chance is 0.1; LoRA starts its head at random
    assert ft.predict_proba(Xte[:5]).shape == (5, 10) and set(ft.classes_) == set(range(10))
    assert type(ft.model_).__name__ == "ImageClassifier"  # LoRA adapters merged: a plain model


def test_same_seed_same_predictions(digits):
    Xtr, ytr, Xte, _ = digits
    a, b = (Finetuner("mobilenet-v2", "full", epochs=1, early_stopping=False, **KW).fit(Xtr[:64], ytr[:64])
            for _ in range(2))
    np.testing.assert_array_equal(a.predict_proba(Xte[:20]), b.predict_proba(Xte[:20]))


def test_save_load_round_trip_is_safetensors_and_json(fitted, digits, tmp_path):
    ft = fitted["lite0"]
    ft.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json", "tunefuse.json"]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["id2label"]["3"] == "3"
    back = Finetuner.load(tmp_path / "m", task="image-classification")
    X = digits[2][:16]
    np.testing.assert_array_equal(back.predict_proba(X), ft.predict_proba(X))
    with pytest.raises(ValueError, match="holds a 'image-classification' model"):
        Finetuner.load(tmp_path / "m", task="text-classification")


def test_unseen_label_at_score_time_is_an_error(fitted, digits):
    with pytest.raises(ValueError, match="unseen during fit"):
        fitted["mnv2_0"].score(digits[2][:3], [1, 2, 11])


@pytest.mark.parametrize("backbone, overrides", [
    ("torchvision:resnet18", {"pretrained": False}),
    ("torchvision:mobilenet_v3_small", {"pretrained": False}),
    ("timm:mobilenetv3_small_050", {"pretrained": False}),
])
def test_any_torchvision_or_timm_name_builds_and_fits(digits, backbone, overrides, tmp_path):
    pytest.importorskip(backbone.split(":")[0])
    Xtr, ytr, Xte, _ = digits
    ft = Finetuner(backbone, "full", epochs=1, config_overrides=overrides, **KW).fit(Xtr[:40], ytr[:40])
    ft.save(tmp_path / "m")
    np.testing.assert_allclose(Finetuner.load(tmp_path / "m").predict_proba(Xte[:4]), ft.predict_proba(Xte[:4]),
                               atol=1e-6)


@pytest.mark.parametrize("backbone, depth, channels", [("mobilenet-v2", 14, 96), ("efficientnet-lite0", 11, 112)])
def test_a_backbone_cut_at_a_depth_keeps_its_first_blocks_and_round_trips(digits, backbone, depth, channels,
                                                                          tmp_path):
    """config_overrides={'depth': k}: the pretrained network's first k blocks (a shallower candidate to rank),
    the same pretrained weights in them, fitted, saved and reloaded to the same predictions."""
    Xtr, ytr, Xte, _ = digits
    whole = Finetuner(backbone, "head", **KW).pretrained_model()
    cut = Finetuner(backbone, "lp-ft", epochs=1, config_overrides={"depth": depth}, **KW).fit(Xtr[:60], ytr[:60])
    assert cut.model_.classifier.in_features == channels
    assert sum(p.numel() for p in cut.model_.parameters()) < 0.5 * sum(p.numel() for p in whole.parameters())
    first = cut.pretrained_model().backbone.state_dict()
    for k, v in first.items():
        torch.testing.assert_close(v, whole.backbone.state_dict()[k])  # the same pretrained weights, fewer blocks
    cut.save(tmp_path / "cut")
    again = Finetuner.load(tmp_path / "cut")
    np.testing.assert_allclose(again.predict_proba(Xte[:8]), cut.predict_proba(Xte[:8]), atol=1e-5)
    assert again.model_.config.depth == depth
    with pytest.raises(ValueError, match=r"depth=99 but backbone .* has \d+ blocks; fix: pass 1\.\.\d+"):
        Finetuner(backbone, "head", config_overrides={"depth": 99}, **KW).fit(Xtr[:20], ytr[:20])
    with pytest.raises(ValueError, match="depth='x' must be a positive int"):
        Finetuner(backbone, "head", config_overrides={"depth": "x"}, **KW).fit(Xtr[:20], ytr[:20])
    seg = dataclasses.replace(get_task("image-segmentation"), image_size=32)
    with pytest.raises(ValueError, match="depth=3 applies to image classification only"):
        Finetuner(backbone, "head", task=seg, config_overrides={"depth": 3}).pretrained_model()


def test_torchvision_weights_missing_offline_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match="not in the torch hub cache.*pretrained': False"):
        Finetuner("torchvision:resnet18", "full", **KW).fit([np.zeros((8, 8))] * 2, [0, 1])
    with pytest.raises(ValueError, match="not a vision backbone"):
        Finetuner("minilm-l6", "full", **KW).fit([np.zeros((8, 8))] * 2, [0, 1])


def test_soup_of_batchnorm_models_copies_counters_and_re_estimates_statistics(fitted, digits):
    Xtr, _, Xte, yte = digits
    a, b = fitted["mnv2_0"], fitted["mnv2_1"]
    key = next(k for k in a.model_.state_dict() if k.endswith("num_batches_tracked"))
    b.model_.state_dict()[key].add_(1)  # members that trained a different number of steps
    try:
        soup = WeightFusion([("a", a), ("b", b)], method="uniform_soup", bn_images=Xtr).fit(Xte[:100], yte[:100])
    finally:
        b.model_.state_dict()[key].sub_(1)
    state = soup.fused_.model_.state_dict()
    mean_key = key.replace("num_batches_tracked", "running_mean")
    averaged = (a.model_.state_dict()[mean_key] + b.model_.state_dict()[mean_key]) / 2
    assert not torch.allclose(state[mean_key], averaged)  # re-estimated, not averaged
    assert soup.score(Xte[100:], yte[100:]) > 0.4
    plain = W.uniform([a.model_.state_dict(), b.model_.state_dict()])
    assert torch.equal(plain[key], a.model_.state_dict()[key])


def test_output_fusion_across_backbones(fitted, digits):
    _, _, Xte, yte = digits
    members = list(fitted.items())
    vote = Voting(members, voting="soft", prefit=True).fit(Xte[:100], yte[:100])
    mean = np.mean([m.predict_proba(Xte[100:]) for _, m in members], axis=0)
    np.testing.assert_allclose(vote.predict_proba(Xte[100:]), mean, atol=1e-6)
    sel = EnsembleSelection(members, prefit=True, metric="accuracy").fit(Xte[:100], yte[:100])
    best = max(m.score(Xte[:100], yte[:100]) for _, m in members)
    assert sel.score(Xte[:100], yte[:100]) >= best
    with pytest.raises(ValueError, match="different backbones"):
        WeightFusion([("a", fitted["mnv2_0"]), ("l", fitted["lite0"])]).fit(Xte[:10], yte[:10])


# ------------------------------------------------------------------------------------------------- segmentation
SEG = dataclasses.replace(get_task("image-segmentation"), image_size=64)


@pytest.fixture(scope="module")
def scenes(digits):
    """Scenes of real digits on a 64 px canvas (train scenes from training digits, test from test digits)."""
    Xtr, ytr, Xte, yte = digits
    return digit_scenes(Xtr, ytr, 96, size=64, max_digits=2, seed=0), digit_scenes(Xte, yte, 32, size=64,
                                                                                      max_digits=2, seed=1)


@pytest.fixture(scope="module")
def segmenters(scenes):
    (imgs, M), _ = scenes
    kw = dict(task=SEG, epochs=2, batch_size=16, early_stopping=False, verbose=0)
    return {f"mnv2_{s}": Finetuner("mobilenet-v2", "full", random_state=s, **kw).fit(imgs, M) for s in (0, 1)}


def test_digit_scenes_are_reproducible_and_masks_follow_the_strokes(digits):
    Xtr, ytr, _, _ = digits
    (a, ma), (b, mb) = digit_scenes(Xtr, ytr, 5, seed=3), digit_scenes(Xtr, ytr, 5, seed=3)
    np.testing.assert_array_equal(a, b) and np.testing.assert_array_equal(ma, mb)
    assert a.shape == ma.shape == (5, 96, 96) and set(np.unique(ma)) <= set(range(11))
    assert np.all(a[ma > 0] >= 128) and np.all(ma[a < 128] == 0)  # stroke pixels labelled, background not


def test_segmentation_learns_and_predicts_masks_at_the_images_size(segmenters, scenes):
    _, (imgs, M) = scenes
    ft = segmenters["mnv2_0"]
    masks = ft.predict(list(imgs[:3]) + [np.zeros((40, 50), np.uint8)])  # any size in, a mask of that size out
    assert [m.shape for m in masks] == [(64, 64)] * 3 + [(40, 50)]
    assert masks[0].dtype == ft.labels_.dtype and set(np.unique(np.concatenate([m.ravel() for m in masks]))) <= set(
        ft.labels_.tolist())
    scores = ft.predict_scores(imgs[:2])
    assert scores[0].shape == (len(ft.labels_), 64, 64) and np.allclose(scores[0].sum(0), 1, atol=1e-4)
    miou = ft.score(imgs, M)
    background_only = SEG.metric(M, [np.zeros_like(m) for m in M])
    assert miou > background_only, (miou, background_only)  # above the all-background answer


def test_mean_iou_by_hand():
    from tunefuse.tasks.image_segmentation import confusion, mean_iou, pixel_accuracy

    t, p = [np.array([[0, 0], [1, 1]])], [np.array([[0, 1], [1, 1]])]
    cm = confusion(t, p, [0, 1])
    assert cm.tolist() == [[1, 1], [0, 2]]
    assert mean_iou(cm) == pytest.approx((1 / 2 + 2 / 3) / 2) and pixel_accuracy(cm) == 0.75


def test_segmentation_fusion_averages_maps_and_soups_re_estimate_batchnorm(segmenters, scenes):
    (imgs, _), (Ite, Mte) = scenes
    members = list(segmenters.items())
    vote = Voting(members, voting="soft", prefit=True).fit(Ite[:16], Mte[:16])
    fused, a, b = vote.predict_scores(Ite[16:18]), *(m.predict_scores(Ite[16:18]) for _, m in members)
    np.testing.assert_allclose(fused[0], (a[0] + b[0]) / 2, atol=1e-5)
    sel = EnsembleSelection(members, prefit=True).fit(Ite[:16], Mte[:16])
    assert sel.score(Ite[:16], Mte[:16]) >= max(m.score(Ite[:16], Mte[:16]) for _, m in members) - 1e-9
    soup = WeightFusion(members, method="uniform_soup", bn_images=imgs).fit(Ite[:16], Mte[:16])
    assert soup.score(Ite[16:], Mte[16:]) > 0


def test_segmentation_round_trip_and_bad_masks(segmenters, scenes, tmp_path):
    _, (imgs, M) = scenes
    ft = segmenters["mnv2_1"]
    ft.save(tmp_path / "seg")
    back = Finetuner.load(tmp_path / "seg", task="segmentation")
    np.testing.assert_array_equal(back.predict_scores(imgs[:2])[1], ft.predict_scores(imgs[:2])[1])
    with pytest.raises(ValueError, match=r"y\[1\] is a mask of shape \(10, 10\) but image X\[1\] is \(64, 64\)"):
        Finetuner("mobilenet-v2", "full", task=SEG, verbose=0).fit(imgs[:2], [M[0], np.zeros((10, 10), int)])
    with pytest.raises(ValueError, match="integer array"):
        Finetuner("mobilenet-v2", "full", task=SEG, verbose=0).fit(imgs[:2], [M[0], M[1].astype(float)])
    with pytest.raises(ValueError, match="strategy='head' starts with a linear probe.*fix: use strategy='full'"):
        Finetuner("mobilenet-v2", "head", task=SEG, verbose=0).fit(imgs[:4], list(M[:4]))
    with pytest.raises(ValueError, match="unseen during fit"):
        ft.score(imgs[:1], [np.full((64, 64), 42)])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bootstrap", "kfold"])
def test_bagging_image_classifiers(digits, mode):
    from tunefuse.fusion import Bagging

    Xtr, ytr, Xte, yte = digits
    member = Finetuner("mobilenet-v2", "head", **KW)
    bag = Bagging(member, n_estimators=2, n_splits=2, mode=mode).fit(Xtr[:120], ytr[:120])
    assert bag.predict_proba(Xte[:10]).shape == (10, 10) and bag.score(Xte, yte) > 0.3


def test_test_time_augmentation_averages_the_allowed_views(fitted, digits, segmenters, scenes):
    from tunefuse.fusion import TestTimeAugmentation

    _, _, Xte, yte = digits
    member = fitted["mnv2_0"]
    tta = TestTimeAugmentation(member).fit()
    assert tta.views_ == ("identity", "zoom")  # digits: no flips
    zoomed = [x[1:27, 1:27] for x in Xte[:6]]  # the 0.9 centre crop of a 28 px digit
    np.testing.assert_allclose(tta.predict_proba(Xte[:6]),
                               (member.predict_proba(Xte[:6]) + member.predict_proba(zoomed)) / 2, atol=1e-5)
    assert 0 <= tta.score(Xte[:50], yte[:50]) <= 1
    seg = segmenters["mnv2_0"]
    seg_tta = TestTimeAugmentation(seg, views=("identity", "hflip")).fit()
    (_, _), (imgs, _) = scenes
    flipped = seg.predict_scores([np.ascontiguousarray(x[:, ::-1]) for x in imgs[:2]])
    expect = (seg.predict_scores(imgs[:2])[0] + flipped[0][..., ::-1]) / 2  # the flipped map flipped back
    np.testing.assert_allclose(seg_tta.predict_scores(imgs[:2])[0], expect, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be mapped back"):
        TestTimeAugmentation(seg, views=("identity", "zoom")).fit()


def test_onnx_export_of_an_image_classifier_matches_torch_and_its_example_runs(fitted, digits, tmp_path):
    """tunefuse.export: model.onnx + preprocess.json + example.py; the example (PIL, numpy, onnxruntime) predicts
    the same digits as the model on PNG files."""
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    from tunefuse.export import export_onnx

    _, _, Xte, _ = digits
    est = fitted["mnv2_0"]
    check = export_onnx(est, tmp_path / "export", images=list(Xte[:4]))
    assert check["max_abs_diff"] <= 1e-4
    spec = json.loads((tmp_path / "export" / "preprocess.json").read_text())
    assert spec["size"] == 32 and len(spec["mean"]) == 3
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.fromarray(Xte[i]).save(p)
        paths.append(str(p))
    ran = subprocess.run([sys.executable, str(tmp_path / "export" / "example.py"), *paths], capture_output=True,
                         text=True, timeout=120, env={"PATH": os.environ.get("PATH", "")})
    assert ran.returncode == 0, ran.stderr
    got = [line.split("\t")[0] for line in ran.stdout.splitlines()]
    want = [str(v) for v in est.predict(paths)]
    assert sum(a == b for a, b in zip(got, want)) >= 5  # PIL's resampling is not torchvision's: near-equal inputs
