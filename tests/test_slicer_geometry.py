"""Geometry of the Slicer client library (pure numpy; no Slicer): RAS <-> IJK over every axis permutation/flip,
slice axis/index detection, box sorting, oblique views, KJI slice replacement and prompt -> params."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "MedPLIBLabel"))

from MedPLIBLabelLib import geometry as g  # noqa: E402
from MedPLIBLabelLib import protocol as pr  # noqa: E402

DIMS = (7, 9, 11)  # IJK
SPACING = np.array([0.7, 1.3, 2.5])
ORIGIN = np.array([-31.0, 12.5, 40.25])
VIEWS = ("axial", "sagittal", "coronal")
NORMALS = {"axial": np.array([0, 0, 1.0]), "sagittal": np.array([1.0, 0, 0]), "coronal": np.array([0, 1.0, 0])}


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            r = np.zeros((3, 3))
            for col, (row, s) in enumerate(zip(perm, signs)):
                r[row, col] = s  # IJK axis `col` runs along +-RAS axis `row`
            yield r


MATRICES = list(_signed_permutations())
assert len(MATRICES) == 48


def _ijk_to_ras(r3):
    m = np.eye(4)
    m[:3, :3] = r3 @ np.diag(SPACING)
    m[:3, 3] = ORIGIN
    return m


def _rot(axis, deg):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _parent(kind):
    if kind is None:
        return None
    m = np.eye(4)
    if kind == "aligned":  # a 90 degree turn and a shift: standard views stay aligned with the volume
        m[:3, :3] = _rot(2, 90)
        m[:3, 3] = [5.0, -7.5, 3.0]
    else:  # an oblique rigid transform; the views are rotated with it (as "Rotate to volume plane" would)
        m[:3, :3] = _rot(0, 17) @ _rot(1, -23) @ _rot(2, 31)
        m[:3, 3] = [-4.0, 2.0, 9.5]
    return m


def _view(view, parent_kind, through_ras):
    """SliceToRAS of a standard view (rotated with an oblique parent) whose plane contains `through_ras`."""
    s = g.standard_slice_to_ras(view)
    if parent_kind == "oblique":
        rot = np.eye(4)
        rot[:3, :3] = _parent("oblique")[:3, :3]
        s = rot @ s
    s[:3, 3] = through_ras
    return s


def _in_plane_jitter(s, spacing_normal, rng):
    """A small offset that keeps a voxel-centre point inside its voxel (in plane and along the normal)."""
    right, up, normal = s[:3, 0], s[:3, 1], s[:3, 2]
    return (rng.uniform(-0.3, 0.3) * right * 0.6 + rng.uniform(-0.3, 0.3) * up * 0.6 +
            rng.uniform(-0.45, 0.45) * normal * spacing_normal)


CASES = [(mi, view, pk) for mi in range(48) for view in VIEWS for pk in (None, "aligned", "oblique")]


@pytest.mark.parametrize("mi,view,parent_kind", CASES)
def test_round_trip_axis_and_index(mi, view, parent_kind):
    rng = np.random.default_rng(mi * 7 + len(view))
    m = _ijk_to_ras(MATRICES[mi])
    parent = _parent(parent_kind)
    world = g.world_matrix(m, parent)
    voxel = [int(rng.integers(0, d)) for d in DIMS]
    ras = g.ijk_to_ras(voxel, m, parent)
    np.testing.assert_allclose(g.ras_to_ijk(ras, m, parent), voxel, atol=1e-9)
    s = _view(view, parent_kind, ras)

    # Which IJK axis the view looks along, and its direction.
    axis, sign = g.slice_axis_from_normal(m, s, parent)
    cols = world[:3, :3] / np.linalg.norm(world[:3, :3], axis=0)
    expected = int(np.argmax(np.abs(cols.T @ s[:3, 2])))
    assert axis == expected
    assert sign == int(np.sign(cols[:, axis] @ s[:3, 2]))
    assert g.slice_index(m, s, parent, dims=DIMS) == voxel[axis]
    spacing = g.slice_spacing(m, s, parent)
    assert spacing == pytest.approx(SPACING[axis])

    # A point anywhere inside the voxel, on this view, maps back to exactly that voxel.
    for _ in range(3):
        p = ras + _in_plane_jitter(s, spacing, rng)
        assert g.point_on_view(p, s, spacing)
        assert g.points_to_ijk([p], m, parent, dims=DIMS) == [voxel]
    # The neighbouring slice's voxel centre is not on this view.
    assert not g.point_on_view(ras + s[:3, 2] * spacing, s, spacing)

    # Box corners: two voxels on the slice, given in either order, come back sorted.
    other = [(voxel[a] + int(rng.integers(1, DIMS[a]))) % DIMS[a] for a in range(3)]  # differs on every axis
    other[axis] = voxel[axis]
    ras_other = g.ijk_to_ras(other, m, parent)
    roi = g.roi_to_ijk(ras_other, ras, m, parent, dims=DIMS)
    want = [v for a in range(3) for v in sorted((voxel[a], other[a]))]
    assert roi == want
    assert g.roi_to_ijk(ras, ras_other, m, parent) == want
    for a in range(3):
        assert roi[2 * a] <= roi[2 * a + 1]

    # The full prompt -> params path.
    params = pr.build_infer_params(
        "What is this?", [pr.PointPrompt(ras, True), pr.PointPrompt(ras_other, False),
                          pr.BoxPrompt(ras, ras_other), pr.ScribblePrompt([ras, ras, ras_other])],
        m, s, parent, dims=DIMS)
    assert params["axis"] == axis and params["slice"] == voxel[axis]
    assert params["foreground"] == [voxel] and params["background"] == [other]
    assert params["roi"] == want
    assert params["scribble"] == [voxel, other]


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("deg,ok", [(0.05, True), (0.5, False), (30.0, False)])
def test_oblique_views_raise(view, deg, ok):
    m = _ijk_to_ras(MATRICES[11])
    s = g.standard_slice_to_ras(view, offset=3.0)
    in_plane_axis = int(np.argmax(np.abs(s[:3, 0])))  # tilt about screen-right
    rot = np.eye(4)
    rot[:3, :3] = _rot(in_plane_axis, deg)
    tilted = rot @ s
    if ok:
        assert g.slice_axis_from_normal(m, tilted)[0] in (0, 1, 2)
    else:
        with pytest.raises(g.ObliqueSliceError):
            g.slice_axis_from_normal(m, tilted)
        with pytest.raises(g.ObliqueSliceError):
            g.slice_index(m, tilted)
        with pytest.raises(g.ObliqueSliceError):
            pr.build_infer_params("q", [], m, tilted)
        assert "Rotate to volume plane" in g.ObliqueSliceError.user_message


def test_standard_views_match_slicer_defaults():
    ax, sag, cor = (g.standard_slice_to_ras(v, offset=4.0) for v in ("Red", "Yellow", "Green"))
    np.testing.assert_array_equal(ax[:3, :3].T, [[-1, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(sag[:3, :3].T, [[0, -1, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(cor[:3, :3].T, [[-1, 0, 0], [0, 0, 1], [0, 1, 0]])
    for s, n in ((ax, 2), (sag, 0), (cor, 1)):
        assert s[n, 3] == 4.0 and np.count_nonzero(s[:3, 3]) == 1
    with pytest.raises(ValueError):
        g.standard_slice_to_ras("oblique")


def test_slice_outside_volume_and_prompt_errors():
    m = _ijk_to_ras(np.eye(3))
    s = g.standard_slice_to_ras("axial", offset=ORIGIN[2] + SPACING[2] * (DIMS[2] + 3))
    with pytest.raises(g.SliceOutsideVolumeError):
        g.slice_index(m, s, dims=DIMS)
    s = g.standard_slice_to_ras("axial", offset=ORIGIN[2] + SPACING[2] * 4)
    off = g.ijk_to_ras([1, 1, 6], m)
    with pytest.raises(pr.PromptError, match="not on the current slice"):
        pr.build_infer_params("q", [pr.PointPrompt(off)], m, s, dims=DIMS)
    params = pr.build_infer_params("q", [pr.PointPrompt(off)], m, s, dims=DIMS, off_slice="drop")
    assert "foreground" not in params and params["slice"] == 4 and params["axis"] == 2
    with pytest.raises(pr.PromptError, match="one slice"):
        pr.build_infer_params("q", [pr.PointPrompt(g.ijk_to_ras([1, 1, 4], m))], m, s, scope="volume")
    with pytest.raises(pr.PromptError, match="one box"):
        b = pr.BoxPrompt(g.ijk_to_ras([1, 1, 4], m), g.ijk_to_ras([2, 2, 4], m))
        pr.build_infer_params("q", [b, b], m, s)
    # A thick 3D box that crosses the slice is flattened onto it; one that misses it is refused.
    thick = pr.BoxPrompt(g.ijk_to_ras([5, 1, 2], m), g.ijk_to_ras([1, 6, 8], m))
    assert pr.build_infer_params("q", [thick], m, s)["roi"] == [1, 5, 1, 6, 4, 4]
    with pytest.raises(pr.PromptError, match="box"):
        pr.build_infer_params("q", [pr.BoxPrompt(g.ijk_to_ras([1, 1, 6], m), g.ijk_to_ras([2, 2, 8], m))], m, s)
    # Window, task and pass-through options.
    p = pr.build_infer_params(" Segment the liver. ", [], m, s, task="ground", window=(40, 400), segment_name="liver",
                              max_new_tokens=32, threshold=None)
    assert p == {"task": "ground", "scope": "slice", "axis": 2, "slice": 4, "question": "Segment the liver.",
                 "label": "liver", "window": {"center": 40.0, "width": 400.0}, "max_new_tokens": 32}
    with pytest.raises(pr.PromptError):
        pr.build_infer_params("q", [], m, s, window={"center": 1, "width": 0})
    with pytest.raises(pr.PromptError):
        pr.build_infer_params("q", [], m, s, task="nonsense")


def test_box_outside_volume_is_clipped_or_refused():
    m = _ijk_to_ras(MATRICES[5])
    a, b = g.ijk_to_ras([-3, 2, 4], m), g.ijk_to_ras([4, 20, 4], m)
    assert g.roi_to_ijk(a, b, m, dims=DIMS) == [0, 4, 2, 8, 4, 4]
    with pytest.raises(g.SliceOutsideVolumeError):
        g.roi_to_ijk(g.ijk_to_ras([-9, 2, 4], m), g.ijk_to_ras([-8, 3, 4], m), m, dims=DIMS)
    with pytest.raises(g.SliceOutsideVolumeError):
        g.points_to_ijk([g.ijk_to_ras([7, 0, 0], m)], m, dims=DIMS)


def test_rotated_roi_corners():
    corners = g.roi_corners_world([1, 2, 3], [2, 4, 6])
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.min(axis=0), [0, 0, 0])
    np.testing.assert_allclose(corners.max(axis=0), [2, 4, 6])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_kji_slice_replacement_and_undo(axis):
    i, j, k = DIMS
    label = np.zeros((k, j, i), np.uint8)  # Slicer's KJI order
    voxel = [3, 5, 8]
    label[voxel[2], voxel[1], voxel[0]] = 2
    plane = pr.slice_replacement(label, axis, voxel[axis], value=2)
    rest = [voxel[a] for a in (2, 1, 0) if a != axis]  # remaining numpy axes keep KJI order
    assert plane.shape == tuple(label.shape[2 - a] for a in (2, 1, 0) if a != axis)
    assert plane[rest[0], rest[1]] and plane.sum() == 1
    assert not pr.slice_replacement(label, axis, voxel[axis], value=1).any()
    assert not pr.label_outside_slice(label, axis, voxel[axis])
    assert pr.label_outside_slice(label, axis, (voxel[axis] + 1) % DIMS[axis])
    seg = np.ones_like(label)
    previous = pr.write_slice(seg, plane, axis, voxel[axis])
    assert previous.all() and pr.read_slice(seg, axis, voxel[axis]).sum() == 1
    assert seg.sum() == seg.size - previous.size + 1  # only that slice changed
    pr.write_slice(seg, previous, axis, voxel[axis])
    assert seg.all()
    masks = pr.masks_from_label(label, {"liver": 2, "spleen": 1}, axis, voxel[axis])
    assert masks["liver"].sum() == 1 and masks["spleen"].sum() == 0
    assert pr.ijk_dims(label.shape) == DIMS
