"""The synthetic-head augmentation (medplib.data.synthetic_head): a skull-stripped brain wrapped in T1-like layers,
brain voxels, label and world coordinates unchanged. Runs on a synthetic ellipsoid brain, no wheel needed."""

from __future__ import annotations

import numpy as np

from medplib.data.synthetic_head import PAD, add_ct_head, add_head


def _brain(shape=(40, 44, 36), spacing=1.5):
    idx = np.indices(shape).astype(np.float32)
    centre = (np.array(shape) - 1) / 2
    r = np.sqrt((((idx - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] * 0.3)) ** 2).sum(0))
    label = np.where(r < 1, np.where(idx[0] < centre[0], 3, 4), 0).astype(np.uint8)  # two "hemispheres"
    data = np.where(label > 0, 180 + 40 * np.cos(idx[1] / 3), 0).astype(np.int16)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = (-20.0, 30.0, -10.0)
    return data, label, affine


def test_brain_label_and_world_coordinates_are_kept():
    data, label, affine = _brain()
    head, head_label, head_affine, drawn = add_head(data, label, affine, seed=3)
    assert head.dtype == np.int16 and head.shape == tuple(s + 2 * PAD for s in data.shape)
    inner = (slice(PAD, -PAD),) * 3
    np.testing.assert_array_equal(head_label[inner], label)
    assert not head_label[:PAD].any() and not head_label[-PAD:].any()
    np.testing.assert_array_equal(head[inner][label > 0], data[label > 0])
    # voxel (0, 0, 0) of the input is voxel (PAD, PAD, PAD) of the output, at the same world position
    np.testing.assert_allclose(head_affine @ [PAD, PAD, PAD, 1], affine @ [0, 0, 0, 1])
    assert set(drawn) >= {"csf_mm", "skull_mm", "scalp_mm", "seed"}


def test_layers_dark_then_bright_outside_the_brain():
    data, label, affine = _brain()
    head, head_label, _, drawn = add_head(data, label, affine, seed=1)
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(head_label == 0, sampling=1.5)
    ref = np.percentile(data[label > 0], 95)
    csf_ring = (dist > 0.5) & (dist <= drawn["csf_mm"] - 0.5)
    scalp_out = drawn["csf_mm"] + drawn["skull_mm"]
    scalp = (dist > scalp_out + 1.5) & (dist <= scalp_out + drawn["scalp_mm"] - 1.5)
    far = dist > scalp_out + drawn["scalp_mm"] + 3
    assert head[csf_ring].mean() < 0.3 * ref  # dark CSF right outside the brain
    assert head[scalp].mean() > 0.6 * ref  # bright scalp fat outside the skull
    assert head[far].mean() < 0.05 * ref  # air
    assert head[csf_ring].mean() < head[scalp].mean()


def test_same_seed_same_head_other_seed_other_head():
    data, label, affine = _brain()
    a = add_head(data, label, affine, seed=7)
    b = add_head(data, label, affine, seed=7)
    c = add_head(data, label, affine, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[3] != c[3] and not np.array_equal(a[0], c[0])


def test_ct_head_in_hounsfield_units_grey_brighter_than_white():
    """The pseudo-CT on nilearn's real MNI152 T1 with its own grey / white matter masks: brain tissue at brain HU,
    grey matter above white (inverted from T1), bone, fat and air where a head CT has them."""
    from nilearn import datasets
    from scipy import ndimage

    mni = datasets.load_mni152_template(resolution=2)
    t1 = np.asarray(mni.dataobj, np.float32)
    gm = np.asarray(datasets.load_mni152_gm_mask(resolution=2).dataobj) > 0
    wm = np.asarray(datasets.load_mni152_wm_mask(resolution=2).dataobj) > 0
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0
    hu, label, affine, drawn = add_ct_head(t1, brain.astype(np.uint8), mni.affine, seed=2)
    inner = (slice(PAD, -PAD),) * 3
    assert hu.dtype == np.int16 and set(np.unique(label).tolist()) == {0, 1}
    np.testing.assert_array_equal(label[inner] > 0, brain)
    np.testing.assert_allclose(affine @ [PAD, PAD, PAD, 1], mni.affine @ [0, 0, 0, 1])
    core = hu[inner]
    deep_gm, deep_wm = ndimage.binary_erosion(gm & ~wm), ndimage.binary_erosion(wm & ~gm)
    assert np.median(core[deep_gm]) > np.median(core[deep_wm]) + 3  # grey above white on CT
    assert -5 < np.median(core[deep_wm]) < 45 and np.median(core[deep_gm]) < 55
    dist = ndimage.distance_transform_edt(label == 0, sampling=2.0)
    skull_mid = drawn["csf_mm"] + 1.0  # inside the inner table
    assert hu[(dist > skull_mid - 0.5) & (dist < skull_mid + 0.5)].mean() > 300
    assert hu[dist > drawn["csf_mm"] + drawn["skull_mm"] + drawn["scalp_mm"] + 6].mean() < -950  # air
