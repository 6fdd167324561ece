"""Training-slice augmentations (medplib.data.augment) on a real slice of the sample datastore: the label moves
with the image, the patient's sides never swap, the draws are reproducible, and `augment=0` leaves the default
recipe's conversations exactly as they were."""

from __future__ import annotations

import random

import numpy as np
import pytest
from monailabel.datastore.local import LocalDatastore

from medplib.data.augment import augment_view
from medplib.data.conversations import build_conversations, load_slice
from medplib.data.volumes import auto_window, read_volume

IMAGE = "mni152_t1"


@pytest.fixture(scope="module")
def view_and_label(sample_datastore_master):
    vol = read_volume(str(sample_datastore_master / f"{IMAGE}.nii.gz"))
    label = read_volume(str(sample_datastore_master / "labels" / "final" / f"{IMAGE}.nii.gz")).array
    view = load_slice(vol, 2, vol.shape[2] // 2, auto_window(vol, "MR"))
    return view, view.mapper.extract_labels(label)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def test_the_label_follows_the_augmented_image(view_and_label):
    view, label = view_and_label
    low = view.window.center - view.window.width / 2
    head = view.plane > low + 0.1 * view.window.width  # what the image itself shows as the head
    assert dice(head, label > 0) > 0.6  # the brain label inside the head, before any change
    for seed in range(6):
        out, moved, record = augment_view(random.Random(seed), view, label)
        assert out.plane.shape == view.plane.shape and moved.shape == label.shape and moved.dtype == label.dtype
        assert set(np.unique(moved)) <= set(np.unique(label))  # nearest neighbour: no new label values
        assert abs(record["turn_deg"]) <= 15 and 0.9 <= record["scale"] <= 1.1
        # The same pose applied to the reference image's head mask matches the moved label as well as before.
        out_head = out.plane > low + 0.1 * view.window.width
        assert dice(out_head, moved > 0) > 0.6, (seed, record)
        assert out.window == view.window and out.mapper is view.mapper
        # Intensity changes stay inside the display window (what the model is shown).
        assert out.plane.min() >= low - 1e-3 and out.plane.max() <= low + view.window.width + 1e-3


def test_sides_never_swap_and_draws_repeat(view_and_label):
    view, label = view_and_label
    cols = np.nonzero(label > 0)[1]
    for seed in range(6):
        _, moved, record = augment_view(random.Random(seed), view, label)
        # A turn of at most 15 degrees keeps the brain's left and right halves where they were.
        left_before = (label[:, : label.shape[1] // 3] > 0).sum()
        left_after = (moved[:, : moved.shape[1] // 3] > 0).sum()
        assert abs(int(left_after) - int(left_before)) < 0.5 * max(int(left_before), 1), record
        again = augment_view(random.Random(seed), view, label)
        assert again[2] == record and np.array_equal(again[1], moved)
    assert len(cols)


def test_augment_zero_changes_nothing_and_one_changes_every_slice(sample_datastore_master):
    store = LocalDatastore(str(sample_datastore_master), auto_reload=False)
    kw = dict(slice_step=40, kinds=("ground",), image_ids=[IMAGE])
    plain = build_conversations(store, "train", seed=3, **kw)
    zero = build_conversations(store, "train", seed=3, augment=0.0, **kw)
    assert [(c.question, c.index) for c in plain] == [(c.question, c.index) for c in zero]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(plain, zero))
    full = build_conversations(store, "train", seed=3, augment=1.0, **kw)
    assert [(c.question, c.index) for c in plain] == [(c.question, c.index) for c in full]
    assert all(not np.array_equal(a.rgb, b.rgb) for a, b in zip(plain, full))
    # Validation slices are never augmented by the trainer (run_training passes `augment` to "train" only).
