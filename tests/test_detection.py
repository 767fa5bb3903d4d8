"""Object detection on the real tree-crown images of deepforest's package data, with a pretrained MobileNetV2.

Tiny settings: 160 px crops of OSBS_029 (61 crowns in 400 x 400) cut into 96 px tiles, resized to 64 px; the
models are barely trained, so the tests check plumbing, geometry, fusion and errors, not accuracy.
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


def test_tile_merge_keeps_the_whole_box_over_its_cut_part():
    boxes = np.array([[0, 0, 40, 40], [20, 0, 40, 40], [100, 100, 120, 120]], np.float32)
    keep = merge_tiles(boxes, np.array([0.9, 0.95, 0.5]), np.array([0, 0, 0]))
    assert sorted(keep.tolist()) == [1, 2]  # IoU 0.5 would keep both halves; intersection over the smaller merges
    assert sorted(merge_tiles(boxes, np.array([0.9, 0.95, 0.5]), np.array([0, 1, 0])).tolist()) == [0, 1, 2]


def test_map_by_hand():
    t = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "labels": np.array(["a", "a"])}]
    perfect = [dict(t[0], scores=np.array([0.9, 0.8]))]
    assert mean_average_precision(t, perfect)["map"] == pytest.approx(1.0)
    half = [{"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array(["a"]), "scores": np.array([0.9])}]
    assert mean_average_precision(t, half)["map_50"] == pytest.approx(0.5, abs=0.01)


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


def test_same_seed_same_boxes(crowns):
    X, y = crowns
    a, b = (Finetuner("mobilenet-v2", epochs=1, **KW).fit(X[:2], y[:2]).predict(X[3:]) for _ in range(2))
    np.testing.assert_array_equal(a[0]["boxes"], b[0]["boxes"])


def test_lora_detector_trains_adapters_and_the_new_heads(crowns):
    X, y = crowns
    m = Finetuner("mobilenet-v2", "lora", epochs=1, **KW).fit(X[:2], y[:2])
    assert m.predict(X[3:])[0]["boxes"].shape[1] == 4 and not hasattr(m.model_, "peft_config")


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
])
def test_bad_boxes_name_the_image_and_the_fix(crowns, target, match):
    X, y = crowns
    with pytest.raises(ValueError, match=match):
        Finetuner("mobilenet-v2", epochs=1, **KW).fit(X[:2], [y[0], target])


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
    assert as_targets([np.zeros((0, 4))], [(10, 10)])[0]["boxes"].shape == (0, 4)
