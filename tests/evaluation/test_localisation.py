"""Pointing game on hand-built fixtures: known boxes, known arg-max cells, counts worked out by hand."""

import math

import pytest

from csra_posthoc.errors import CSRAError
from csra_posthoc.evaluation.localisation import cell_centre, pointing_game, summary_line

SQUARE = {"kind": "square-resize", "size": 4}
CROP = {"kind": "center-crop", "size": 4, "resize": 4, "crop_pct": 1.0, "crop_mode": "center"}


def test_cell_centre_square_resize_stretches_each_axis():
    # 100 wide, 200 high, 4x4 grid: cells are 25 x 50 pixels.
    assert cell_centre(SQUARE, (4, 4), (0, 0), (100, 200)) == (12.5, 25.0)
    assert cell_centre(SQUARE, (4, 4), (3, 1), (100, 200)) == (37.5, 175.0)


def test_cell_centre_centre_crop_keeps_the_central_square():
    # 200 x 100 image, short side already 4 -> scale 0.04; the crop keeps x in [50, 150]: cells 25 px.
    assert cell_centre(CROP, (4, 4), (0, 0), (200, 100)) == pytest.approx((62.5, 12.5))
    assert cell_centre(CROP, (4, 4), (3, 3), (200, 100)) == pytest.approx((137.5, 87.5))


def test_unmappable_transform_is_refused():
    with pytest.raises(CSRAError):
        cell_centre({"kind": "center-crop", "size": 4, "resize": 4, "crop_mode": "squash"}, (4, 4), (0, 0), (10, 10))
    with pytest.raises(CSRAError):
        cell_centre({"kind": "mystery"}, (4, 4), (0, 0), (10, 10))


def test_hits_misses_several_boxes_and_left_out_pairs():
    classes = ["a", "b", "c"]
    size = (100, 200)  # cells 25 x 50 px, centres x in {12.5, 37.5, 62.5, 87.5}, y in {25, 75, 125, 175}
    top_left = (0.0, 0.0, 50.0, 100.0)  # cols 0-1, rows 0-1: 4 of 16 centres
    b_boxes = [(0.0, 0.0, 30.0, 60.0), (70.0, 140.0, 100.0, 200.0)]  # cell (0,0) and cell (3,3): 2 of 16
    labels = [
        [1, -1, 1],  # a positive, b difficult (left out), c positive but no box (left out)
        [1, 1, 0],
    ]
    argmax = [
        [0, 15, 0],  # a at (0,0): hit
        [15, 15, 0],  # a at (3,3): miss; b at (3,3): inside the second box: hit
    ]
    boxes = [{0: [top_left], 1: b_boxes}, {0: [top_left], 1: b_boxes}]
    out = pointing_game(labels, argmax, (4, 4), boxes, [size, size], SQUARE, classes)
    g = out["pointing_game"]
    assert g["pairs"] == 3 and g["hits"] == 2
    assert g["hit_rate"] == pytest.approx(2 / 3)
    assert g["chance_rate"] == pytest.approx((4 / 16 + 4 / 16 + 2 / 16) / 3)
    assert set(g["per_class"]) == {"a", "b"}
    assert g["per_class"]["a"] == {"hit_rate": 0.5, "chance_rate": 0.25, "pairs": 2, "hits": 1}
    assert g["per_class"]["b"]["hit_rate"] == 1.0 and g["per_class"]["b"]["chance_rate"] == pytest.approx(2 / 16)
    assert "chance" in out["definition"]
    assert summary_line(out) == "pointing game: 66.7 % of 3 positive (image, class) pairs hit a box (chance 20.8 %)"


def test_box_cropped_away_by_centre_crop_is_never_hit():
    # 200 x 100 image, centre crop keeps x in [50, 150]; a box at x in [0, 40] is outside every cell centre.
    out = pointing_game([[1]], [[0]], (4, 4), [{0: [(0.0, 0.0, 40.0, 100.0)]}], [(200, 100)], CROP, ["a"])
    g = out["pointing_game"]
    assert g["pairs"] == 1 and g["hits"] == 0 and g["chance_rate"] == 0.0


def test_no_pairs_and_bad_index():
    out = pointing_game([[0]], [[0]], (2, 2), [{0: [(0.0, 0.0, 1.0, 1.0)]}], [(2, 2)], SQUARE, ["a"])
    assert out["pointing_game"]["pairs"] == 0 and math.isnan(out["pointing_game"]["hit_rate"])
    assert "no positive" in summary_line(out)
    with pytest.raises(CSRAError):
        pointing_game([[1]], [[4]], (2, 2), [{0: [(0.0, 0.0, 1.0, 1.0)]}], [(2, 2)], SQUARE, ["a"])


def test_voc_boxes_follow_the_difficult_policy(tmp_path):
    from csra_posthoc.data.voc import image_boxes

    xml = tmp_path / "a.xml"
    xml.write_text(
        "<annotation>"
        "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>50</xmin><ymin>5</ymin><xmax>60</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>dog</name><difficult>1</difficult><bndbox><xmin>3</xmin><ymin>3</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>"
        "</annotation>"
    )
    index = {"cat": 0, "dog": 1}
    assert image_boxes(xml, index) == {0: [(1.0, 2.0, 30.0, 40.0), (50.0, 5.0, 60.0, 9.0)]}
    assert image_boxes(xml, index, "positive")[1] == [(3.0, 3.0, 4.0, 4.0)]


def test_coco_boxes_convert_xywh_to_corners():
    from csra_posthoc.data.coco import coco_boxes

    data = {
        "annotations": [
            {"image_id": 7, "category_id": 3, "bbox": [10, 20, 5, 6]},
            {"image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": 1},
            {"image_id": 8, "category_id": 9, "bbox": [1, 1, 1, 1]},  # category not in the class list
            {"image_id": 8, "category_id": 3, "segmentation": []},  # no bbox
        ]
    }
    assert coco_boxes(data, {3: 0}) == {7: {0: [(10.0, 20.0, 15.0, 26.0), (0.0, 0.0, 1.0, 1.0)]}}
