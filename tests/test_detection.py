"""Object detection on the real tree-crown images of deepforest's package data, with a pretrained MobileNetV2.

Tiny settings: 160 px crops of OSBS_029 (61 crowns in 400 x 400) cut into 96 px tiles, resized to 64 px; the
models are barely trained, so the tests check plumbing, geometry, fusion and errors, not accuracy. The tests that
fit detectors are marked slow: the fast subset keeps the readers, geometry, fusion rules and box checks.
"""
import dataclasses
import json

import numpy as np
import pytest

from tunefuse import Finetuner
from tunefuse.fusion import BoxFusion, TestTimeAugmentation, Voting, WeightFusion
from tunefuse.fusion.members import cached
from tunefuse.tasks import get_task
from tunefuse.tasks.object_detection import mean_average_precision
from tunefuse.vision.boxes import (as_targets, crop_target, deepforest_data, fuse_boxes, merge_tiles, read_coco,
                                   read_voc, tiles)
from tunefuse.vision.images import load_rgb

TASK = dataclasses.replace(get_task("detection"), tile=96, image_size=64, hflip=True, vflip=True,
                           anchor_sizes=((8, 12), (16, 24), (32, 48), (64, 96)))
KW = dict(task=TASK, batch_size=4, verbose=0, early_stopping=False)


@pytest.fixture(scope="module")
def crowns():
    """Four 160 px crops of OSBS_029 (quadrants) with their boxes: three to train, one to test."""
    path, target = read_voc(deepforest_data() / "OSBS_029.xml")
    rgb = load_rgb(path)
    X, y = [], []
    for x0, y0 in ((0, 0), (200, 0), (0, 200), (200, 200)):
        win = (x0, y0, x0 + 160, y0 + 160)
        X.append(np.ascontiguousarray(rgb[y0:y0 + 160, x0:x0 + 160]))
        y.append(crop_target(target, win))
    return X, y


@pytest.fixture(scope="module")
def detectors(crowns):
    X, y = crowns
    return {f"mnv2_{s}": Finetuner("mobilenet-v2", epochs=2, random_state=s, **KW).fit(X[:3], y[:3])
            for s in (0, 1)}


def test_voc_reader_and_the_packaged_tree_crowns():
    path, t = read_voc(deepforest_data() / "SOAP_061.xml", label_map={"Alive": "tree", "Dead": "tree"})
    assert path.endswith("SOAP_061.png") and t["boxes"].shape == (37, 4) and set(t["labels"]) == {"tree"}
    assert (t["boxes"][:, 2] > t["boxes"][:, 0]).all()


def test_coco_reader_converts_xywh_and_rasterises_polygons(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
            "categories": [{"id": 3, "name": "car"}],
            "annotations": [{"id": 9, "image_id": 1, "category_id": 3, "bbox": [2, 4, 10, 5], "area": 50,
                             "segmentation": [[2, 4, 12, 4, 12, 9, 2, 9]]}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    paths, targets = read_coco(tmp_path / "ann.json")
    assert paths == [str(tmp_path / "a.png")] and targets[0]["boxes"].tolist() == [[2, 4, 12, 9]]
    assert targets[0]["labels"].tolist() == ["car"]
    _, masks = read_coco(tmp_path / "ann.json", masks=True)
    assert masks[0].shape == (20, 30) and masks[0][6, 6] == 3 and masks[0][0, 0] == 0
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO annotation file.*'categories'"):
        read_coco(tmp_path / "bad.json")


def test_tiles_cover_the_image_and_cut_boxes_follow_the_half_rule():
    wins = tiles(250, 400, 160, 0.25)
    assert wins[0] == (0, 0, 160, 160) and wins[-1] == (240, 90, 400, 250)
    covered = np.zeros((250, 400), bool)
    for x0, y0, x1, y1 in wins:
        covered[y0:y1, x0:x1] = True
    assert covered.all() and tiles(100, 100, 160, 0.25) == [(0, 0, 100, 100)]
    t = {"boxes": np.array([[150, 10, 170, 30], [140, 10, 170, 30]], np.float32), "labels": np.array(["a", "b"])}
    cut = crop_target(t, (0, 0, 160, 160))  # the first box is half inside (kept, clipped), the second 2/3
    assert cut["boxes"].tolist() == [[150, 10, 160, 30], [140, 10, 160, 30]]
    assert crop_target(t, (0, 0, 155, 160))["labels"].tolist() == ["b"]  # a quarter of the first box: dropped


def test_tile_merge_restores_the_whole_box_from_its_cut_part():
    # tile 0 sees the whole crown [0, 40]; tile 1 only its right half [20, 40], scored higher
    boxes = np.array([[0, 0, 40, 40], [20, 0, 40, 40], [100, 100, 120, 120]], np.float32)
    keep, merged = merge_tiles(boxes, np.array([0.9, 0.95, 0.5]), np.zeros(3), np.array([0, 1, 1]))
    assert keep.tolist() == [1, 2] and merged.tolist() == [[0, 0, 40, 40], [100, 100, 120, 120]]
    _, same_tile = merge_tiles(boxes, np.array([0.9, 0.95, 0.5]), np.zeros(3), np.zeros(3))
    assert len(same_tile) == 3  # one tile's boxes stay as the model's own NMS kept them
    _, other_class = merge_tiles(boxes, np.array([0.9, 0.95, 0.5]), np.array([0, 1, 0]), np.array([0, 1, 1]))
    assert len(other_class) == 3


def test_sliced_inference_maps_tile_boxes_back_to_image_pixels():
    task = dataclasses.replace(TASK, tile=100, image_size=50)
    wins = task.windows(120, 250)  # a strip: 3 x 2 windows, the last row and column flush with the border
    assert wins[0] == (0, 0, 100, 100) and wins[-1] == (150, 20, 250, 120)

    class Enc:  # what encode keeps for scores: per unit its image and window
        example = np.zeros(len(wins), dtype=np.int64)
        extra = {"windows": wins, "sizes": [(120, 250)], "processor": type("P", (), {"size": 50})()}

    # every unit sees one box at input pixels (10, 10, 20, 20): image pixels (20, 20, 40, 40) + its window offset
    units = [np.array([[10, 10, 20, 20, 0.9 - 0.1 * u, 0]], np.float32) for u in range(len(wins))]
    d = task.scores([None], Enc(), units, np.array(["Tree"]))[0]
    expected = {(x0 + 20, y0 + 20, x0 + 40, y0 + 40) for x0, y0, _, _ in wins}
    assert {tuple(b) for b in d["boxes"].round().astype(int).tolist()} == expected and d["size"] == (120, 250)
    small = task.unit_scale((0, 0, 60, 40), 50)  # a window smaller than a tile keeps the tiles' scale (padded)
    assert small == [0.5, 0.5, 0.5, 0.5]


def test_training_flips_move_boxes_with_the_pixels(crowns):
    X, y = crowns
    task = dataclasses.replace(TASK, tile=None, image_size=64)
    from tunefuse.vision.images import ImageProcessor

    enc = task.encode(ImageProcessor(size=64, crop=False), X[:1], 0, labels=np.array(["Tree"]), y=y[:1])
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for _ in range(6):  # each draw flips or not; the marked pixel must stay inside its box
        pixels = enc.extra["pixels"].clone()
        b = enc.targets[0]["boxes"][0].round().long()
        pixels[:] = 0
        pixels[0, :, b[1]:b[3], b[0]:b[2]] = 255
        inputs, targets = task.collate(type(enc)(ids=[], example=enc.example, extra=dict(enc.extra, pixels=pixels),
                                                 targets=enc.targets), np.array([0]), 0, train=True)
        x1, y1, x2, y2 = targets[0]["boxes"][0].round().long().tolist()
        img = inputs["pixel_values"][0, 0]
        assert img[y1:y2, x1:x2].mean() > img.mean() + 1  # the bright patch moved with its box


def test_map_by_hand():
    t = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "labels": np.array(["a", "a"])}]
    perfect = [dict(t[0], scores=np.array([0.9, 0.8]))]
    assert mean_average_precision(t, perfect)["map"] == pytest.approx(1.0)
    half = [{"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array(["a"]), "scores": np.array([0.9])}]
    assert mean_average_precision(t, half)["map_50"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_weighted_boxes_fusion_averages_matched_boxes_and_nms_keeps_one():
    a = {"boxes": np.array([[0, 0, 10, 10]], np.float32), "scores": np.array([0.8]), "labels": np.array([0])}
    b = {"boxes": np.array([[2, 0, 12, 10]], np.float32), "scores": np.array([0.8]), "labels": np.array([0])}
    wbf = fuse_boxes([a, b], [0.5, 0.5], (20, 20), "wbf", 0.55)
    assert wbf["boxes"].round(3).tolist() == [[1, 0, 11, 10]] and wbf["scores"][0] == pytest.approx(0.8)
    nms = fuse_boxes([a, b], [0.5, 0.5], (20, 20), "nms", 0.55)
    assert len(nms["boxes"]) == 1 and nms["boxes"][0].tolist() in ([0, 0, 10, 10], [2, 0, 12, 10])
    alone = fuse_boxes([a, {**b, "boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}],
                       [0.5, 0.5], (20, 20), "wbf", 0.55)
    assert alone["scores"][0] == pytest.approx(0.4)  # one of two members saw it: half the confidence
    for method in ("wbf", "nms", "soft-nms"):  # a member of weight 0 takes no part (no NaN cluster, no 0-score box)
        zero, only = fuse_boxes([a, b], [1.0, 0.0], (20, 20), method), fuse_boxes([a], [1.0], (20, 20), method)
        np.testing.assert_allclose(zero["boxes"], only["boxes"])
        np.testing.assert_allclose(zero["scores"], only["scores"])


@pytest.mark.slow
def test_soft_nms_decays_overlapping_scores_and_nms_keeps_no_overlapping_pair():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, (40, 2))
    members = [{"boxes": np.c_[xy, xy + 15] + rng.normal(0, 2, (40, 4)), "scores": rng.uniform(0.1, 1, 40),
                "labels": np.zeros(40, np.int64)} for _ in range(2)]
    from tunefuse.vision.boxes import _iou, soft_nms

    nms = fuse_boxes(members, [0.5, 0.5], (100, 100), "nms", 0.5)
    for i, box in enumerate(nms["boxes"]):
        assert (_iou(box, np.delete(nms["boxes"], i, 0)) < 0.5 + 1e-6).all()
    pooled = [np.concatenate([m[k] for m in members]) for k in ("boxes", "scores", "labels")]
    b, s, _ = soft_nms(*pooled, iou=0.5)
    assert s.max() == pytest.approx(pooled[1].max()) and s.sum() < pooled[1].sum() - 1e-3  # overlaps decayed
    assert len(b) == len(s) and (np.diff(fuse_boxes(members, [1, 1], (100, 100), "soft-nms")["scores"]) <= 0).all()


@pytest.mark.slow
def test_detector_fits_predicts_boxes_in_image_pixels_and_round_trips(detectors, crowns, tmp_path):
    X, y = crowns
    m = detectors["mnv2_0"]
    pred = m.predict(X[3:])
    d = pred[0]
    assert set(d) == {"boxes", "scores", "labels"} and d["boxes"].shape[1] == 4 and len(d["boxes"]) > 0
    assert d["boxes"].min() >= 0 and d["boxes"].max() <= 160 and (np.diff(d["scores"]) <= 0).all()
    assert set(d["labels"].tolist()) <= {"Tree"}
    assert 0 <= m.score(X[3:], y[3:]) <= 1 and m.history_[-1]["train_loss"] > 0
    m.save(tmp_path / "det")
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json", "tunefuse.json"]
    again = Finetuner.load(tmp_path / "det", task="detection").predict(X[3:])
    np.testing.assert_allclose(again[0]["boxes"], d["boxes"], atol=1e-4)


@pytest.mark.slow
def test_same_seed_same_boxes(crowns):
    X, y = crowns
    a, b = (Finetuner("mobilenet-v2", epochs=1, **KW).fit(X[:2], y[:2]).predict(X[3:]) for _ in range(2))
    assert len(a[0]["boxes"]) > 0
    np.testing.assert_array_equal(a[0]["boxes"], b[0]["boxes"])
    np.testing.assert_array_equal(a[0]["scores"], b[0]["scores"])


@pytest.mark.slow
def test_lora_detector_trains_adapters_and_the_new_heads(crowns):
    X, y = crowns
    m = Finetuner("mobilenet-v2", "lora", epochs=1, **KW).fit(X[:2], y[:2])
    start = m.pretrained_model().state_dict()
    now = m.model_.state_dict()
    assert m.predict(X[3:])[0]["boxes"].shape[1] == 4 and not hasattr(m.model_, "peft_config")
    changed = lambda prefix: any(not torch_equal(now[k], start[k]) for k in now if k.startswith(prefix))  # noqa
    assert changed("roi_heads.") and changed("rpn.") and changed("fpn.")  # the new modules train in full
    depthwise = [k for k in now if k.startswith("backbone.") and k.endswith("1.0.weight") and now[k].shape[1] == 1]
    assert depthwise and all(torch_equal(now[k], start[k]) for k in depthwise)  # LoRA leaves these frozen


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


@pytest.mark.slow
def test_box_fusions_and_weight_fusion_of_detectors(detectors, crowns):
    X, y = crowns
    members = list(detectors.items())
    for method in ("wbf", "nms", "soft-nms"):
        f = BoxFusion(members, method=method).fit(X[2:3], y[2:3])
        out = f.predict(X[3:])
        assert out[0]["boxes"].shape[1] == 4 and 0 <= f.score(X[3:], y[3:]) <= 1
    fitted = BoxFusion(members, weights="fit", n_iter=3).fit(X[2:3], y[2:3])
    assert sum(fitted.weights_.values()) == pytest.approx(1.0)
    assert Voting(members, prefit=True).fit(X[2:3], y[2:3]).predict(X[3:])[0]["boxes"].shape[1] == 4
    with pytest.raises(ValueError, match="no per-example probability.*BoxFusion"):
        Voting(members, weights="fit", prefit=True).fit(X[2:3], y[2:3])
    replayed = cached(members)  # each member predicts an input once, fusions replay its boxes
    again = BoxFusion(replayed).fit(X[2:3], y[2:3]).predict(X[3:])
    np.testing.assert_allclose(again[0]["boxes"], BoxFusion(members).fit(X[2:3], y[2:3]).predict(X[3:])[0]["boxes"])
    assert replayed[0][1].predict(X[3:])[0]["boxes"].shape[1] == 4 and replayed[0][1].replayed_s > 0
    soup = WeightFusion(members, method="uniform_soup", bn_images=X[:3]).fit(X[2:3], y[2:3])
    assert soup.predict(X[3:])[0]["boxes"].shape[1] == 4
    m = detectors["mnv2_0"]
    self_soup = WeightFusion([("a", m), ("b", m)], method="uniform_soup", bn_images=X[:3]).fit(X[2:3], y[2:3])
    np.testing.assert_allclose(self_soup.predict(X[3:])[0]["boxes"], m.predict(X[3:])[0]["boxes"], atol=1e-3)


@pytest.mark.slow
def test_test_time_augmentation_flips_boxes_back(detectors, crowns):
    X, _ = crowns
    m = detectors["mnv2_0"]
    task = m.task_
    d = {"boxes": np.array([[10, 20, 30, 60]], np.float32), "size": (100, 160)}
    assert task.flip_scores(d, "hflip")["boxes"].tolist() == [[130, 20, 150, 60]]
    assert task.flip_scores(d, "vflip")["boxes"].tolist() == [[10, 40, 30, 80]]
    tta = TestTimeAugmentation(m).fit()
    assert tta.views_ == ("identity", "hflip", "vflip") and tta.predict(X[3:])[0]["boxes"].shape[1] == 4


@pytest.mark.parametrize("target, match", [
    ({"boxes": [[10, 10, 5, 20]], "labels": ["Tree"]}, "box 0 .* x2 <= x1"),
    ({"boxes": [[10, 10, 400, 20]], "labels": ["Tree"]}, "outside its 160 x 160 image"),
    ({"boxes": [[10, 10, 20, 20]], "labels": ["Tree", "Tree"]}, "1 boxes but labels of shape"),
    ({"labels": ["Tree"]}, "has keys \\['labels'\\]"),
    ([[0.1, 0.1, 0.5]], "boxes have shape"),
    ({"boxes": [[1, 2, 3, 4], [1, 2]], "labels": ["Tree", "Tree"]}, "boxes have shape ragged"),
    ({"boxes": [[0.1, 0.1, 0.5, 0.5]], "labels": ["Tree"]}, "look normalised.*multiply x by the width"),
])
def test_bad_boxes_name_the_image_and_the_fix(crowns, target, match):
    X, y = crowns
    with pytest.raises(ValueError, match=match):
        Finetuner("mobilenet-v2", epochs=1, **KW).fit(X[:2], [y[0], target])


@pytest.mark.slow
def test_detection_input_errors(detectors, crowns):
    X, y = crowns
    with pytest.raises(ValueError, match="y=None: detection needs one target per image"):
        Finetuner("mobilenet-v2", **KW).fit(X[:2])
    with pytest.raises(ValueError, match="sample_weight is not supported.*object-detection"):
        Finetuner("mobilenet-v2", **KW).fit(X[:2], y[:2], sample_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="strategy='lp-ft' starts with a linear probe"):
        Finetuner("mobilenet-v2", "lp-ft", **KW).fit(X[:2], y[:2])
    with pytest.raises(ValueError, match="labels \\['Car'\\] unseen during fit"):
        detectors["mnv2_0"].score(X[3:], [{"boxes": [[1, 1, 9, 9]], "labels": ["Car"]}])
    with pytest.raises(ValueError, match="box_fusion='mean' is invalid"):
        dataclasses.replace(TASK, box_fusion="mean")
    with pytest.raises(ValueError, match="1 example cannot be split; fix: pass X_val"):
        Finetuner("mobilenet-v2", **dict(KW, early_stopping=True)).fit(X[:1], y[:1])
    with pytest.raises(ValueError, match="features\\(\\) returns a linear head's inputs"):
        detectors["mnv2_0"].features(X[3:])


@pytest.mark.slow
def test_early_stopping_on_validation_map_keeps_the_best_epoch(crowns):
    X, y = crowns
    m = Finetuner("mobilenet-v2", **dict(KW, early_stopping=True, epochs=2)).fit(X[:2], y[:2], X_val=X[2:3],
                                                                               y_val=y[2:3])
    scores = [h["val_score"] for h in m.history_]
    assert len(scores) == 2 and all(0 <= v <= 1 for v in scores)
    assert m.score(X[2:3], y[2:3]) == pytest.approx(max(scores), abs=1e-6)  # the best epoch's weights restored
    assert as_targets([np.zeros((0, 4))], [(10, 10)])[0]["boxes"].shape == (0, 4)
