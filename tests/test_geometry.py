"""Volume <-> radiological plane mapping over every axis permutation and flip (48 orientations)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medplib.data.planes import PlaneMapper


def orientations():
    """All 48 signed permutation matrices (columns = LPS direction of voxel axes i, j, k)."""
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            for axis, (world, sign) in enumerate(zip(perm, signs)):
                d[world, axis] = sign
            yield d


def world_coords(shape, spacing, direction):
    """LPS world coordinate of every voxel, shape (*shape, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return (idx * np.asarray(spacing)) @ direction.T


# Expected on-screen directions (LPS world axis, sign) of columns and rows, keyed by the normal's world axis.
SCREEN = {2: ((0, +1), (1, +1)), 1: ((0, +1), (2, -1)), 0: ((1, +1), (2, -1))}


@pytest.mark.parametrize("direction", list(orientations()), ids=lambda d: "".join(map(str, d.astype(int).ravel())))
def test_plane_is_radiological_and_points_round_trip(direction):
    shape, spacing = (7, 9, 5), (1.0, 1.0, 1.0)
    world = world_coords(shape, spacing, direction)
    for axis in range(3):
        k = shape[axis] // 2
        m = PlaneMapper.create(shape, spacing, direction, axis, k)
        (cw, cs), (rw, rs) = SCREEN[int(np.argmax(np.abs(direction[:, axis])))]
        cols_world = m.extract(world[..., cw])
        rows_world = m.extract(world[..., rw])
        assert np.all(np.diff(cols_world, axis=1) * cs > 0), "columns must run toward the view's screen-right"
        assert np.all(np.diff(rows_world, axis=0) * rs > 0), "rows must run toward the view's screen-down"
        # Every voxel of the slice maps to a plane pixel holding its own value, and back to itself.
        ids = np.arange(np.prod(shape)).reshape(shape).astype(np.float32)
        plane = m.extract(ids)
        for ijk in itertools.product(*[range(n) if a != axis else [k] for a, n in enumerate(shape)]):
            r, c = m.to_plane(ijk)
            assert plane[int(round(r)), int(round(c))] == ids[ijk]
            assert m.to_voxel(r, c) == ijk


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 2.5), (0.7, 2.1, 1.0), (3.0, 1.0, 1.0)])
@pytest.mark.parametrize("direction", [np.eye(3), np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0.0]])])
def test_anisotropic_planes_are_resampled_and_mapped_back_exactly(spacing, direction):
    shape = (6, 8, 5)
    for axis in range(3):
        k = 2
        m = PlaneMapper.create(shape, spacing, direction, axis, k)
        in_plane = [spacing[a] for a in range(3) if a != axis]
        rows, cols = m.model_shape
        # Physical size is preserved on the isotropic model grid (finest spacing).
        assert rows * min(in_plane) == pytest.approx(m.plane_shape[0] * spacing[m.row_axis], abs=min(in_plane))
        assert cols * min(in_plane) == pytest.approx(m.plane_shape[1] * spacing[m.col_axis], abs=min(in_plane))
        assert m.row_scale >= 1 and m.col_scale >= 1
        for ijk in itertools.product(*[range(n) if a != axis else [k] for a, n in enumerate(shape)]):
            r, c = m.to_plane(ijk)
            single = np.zeros(m.model_shape, bool)
            single[int(round(r)), int(round(c))] = True
            back = m.plane_to_slice(single)
            assert m.to_voxel(r, c) == ijk
            # The pixel the model saw maps back onto exactly this voxel and no other.
            expected = np.zeros(back.shape, bool)
            expected[tuple(ijk[a] for a in range(3) if a != axis)] = True
            assert np.array_equal(back, expected)
        # A full-slice mask maps back to a full slice.
        assert m.plane_to_slice(np.ones(m.model_shape, bool)).all()


def test_mapper_rejects_bad_axis_and_slice():
    with pytest.raises(ValueError, match="axis"):
        PlaneMapper.create((4, 4, 4), (1, 1, 1), np.eye(3), 3, 0)
    with pytest.raises(ValueError, match="slice 4"):
        PlaneMapper.create((4, 4, 4), (1, 1, 1), np.eye(3), 2, 4)
