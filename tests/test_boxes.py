"""Boxes from masks, the BiRD / MedRegA text conventions (exact round trips) and the box metrics."""

from __future__ import annotations

import random

import numpy as np
import pytest

from medplib.imaging.boxes import (
    PixelBox,
    box_iou,
    format_boxes,
    from_grid,
    hungarian_accuracy,
    mask_boxes,
    parse_boxes,
    recall_at,
    to_grid,
)


def test_one_box_per_component_with_min_area_largest_first():
    m = np.zeros((40, 60), bool)
    m[2:6, 3:9] = True  # 24 px
    m[10:30, 20:50] = True  # 600 px
    m[35, 55] = True  # 1 px: below min_area
    m[31, 51] = True  # touches the big one diagonally? no: (30,50) is outside, so its own 1 px component
    boxes = mask_boxes(m, min_area=10)
    assert boxes == [PixelBox(20, 10, 50, 30), PixelBox(3, 2, 9, 6)]
    assert len(mask_boxes(m, min_area=1)) == 4
    assert mask_boxes(np.zeros((5, 5))) == []


@pytest.mark.parametrize("shape", [(233, 197), (512, 512), (999, 640), (7, 999)])
@pytest.mark.parametrize("convention", ["bird", "medrega"])
def test_pixel_grid_pixel_is_exact_up_to_the_grid_size(shape, convention):
    rng = random.Random(0)
    h, w = shape
    for _ in range(300):
        x1, x2 = sorted(rng.sample(range(w + 1), 2))
        y1, y2 = sorted(rng.sample(range(h + 1), 2))
        b = PixelBox(x1, y1, x2, y2)
        assert from_grid(to_grid(b, shape, convention), shape, convention) == b


@pytest.mark.parametrize("convention", ["bird", "medrega"])
def test_text_round_trip_with_phrases_and_several_boxes(convention):
    shape = (233, 197)
    boxes = [PixelBox(10, 20, 50, 60), PixelBox(0, 0, 197, 233)]
    text = format_boxes("white matter", boxes, shape, convention)
    if convention == "bird":
        assert text == "<ref>white matter</ref><box>(51,86),(254,258)</box><box>(0,0),(1000,1000)</box>"
    else:
        assert text == "<ref>white matter</ref><box>[[51, 86, 254, 257], [0, 0, 999, 999]]</box>"
    found = parse_boxes(f"The answer is {text} and more.", shape)
    assert [(f.phrase, f.box, f.convention) for f in found] == [("white matter", b, convention) for b in boxes]
    assert parse_boxes("<ref>a</ref><box>(1,2),(3,4)</box> <ref>b</ref><box>[[5, 6, 7, 8]]</box>", (1000, 1000))[
        1].phrase == "b"


def test_bare_bird_coordinates_and_bad_boxes():
    found = parse_boxes("it is at (100,200),(300,400)", (1000, 1000))
    assert found[0].phrase is None and found[0].box == PixelBox(100, 200, 300, 400)
    with pytest.raises(ValueError, match="x1 < x2"):
        parse_boxes("<box>[[50, 50, 40, 60]]</box>", (100, 100))
    with pytest.raises(ValueError, match="0..999"):
        parse_boxes("<box>[[0, 0, 1000, 10]]</box>", (100, 100))
    with pytest.raises(ValueError, match="neither"):
        parse_boxes("<box>somewhere</box>", (100, 100))


def test_metrics_hand_computed():
    a, b = PixelBox(0, 0, 10, 10), PixelBox(5, 0, 15, 10)
    assert box_iou(a, b) == pytest.approx(50 / 150)
    assert box_iou(a, PixelBox(20, 20, 30, 30)) == 0.0
    assert recall_at([a], [PixelBox(0, 0, 10, 9)]) == 1.0  # IoU 0.9
    assert recall_at([b], [a]) == 0.0  # IoU 1/3
    assert recall_at([], []) == 1.0 and recall_at([a], []) == 0.0
    g1, g2 = PixelBox(0, 0, 10, 10), PixelBox(50, 50, 60, 60)
    p1, p2 = PixelBox(51, 50, 61, 60), PixelBox(0, 0, 10, 8)  # IoUs 9/11 = 0.82 and 0.8, order swapped
    assert hungarian_accuracy([p1, p2], [g1, g2], 0.75) == 1.0
    assert hungarian_accuracy([p1, p2], [g1, g2], 0.81) == 0.5
    assert hungarian_accuracy([p1], [g1, g2], 0.5) == 0.5  # a missed box counts
    assert hungarian_accuracy([p1, p2, PixelBox(90, 90, 99, 99)], [g1, g2], 0.5) == pytest.approx(2 / 3)
