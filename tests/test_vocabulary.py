"""The brain vocabulary (#18): table, name resolution in English and Chinese, atlas values, patient sides, /info."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medplib.data.volumes import read_volume
from medplib.data.vocabulary import (TABLE, name_at, name_for, resolve, side_of, structure_at, volume_affine,
                                     vocabulary)
from medplib.model.bilingual import ZH_NAMES, to_zh

ROOT = Path(__file__).resolve().parents[1]


def test_table_has_at_least_60_structures_each_with_chinese_name_and_source():
    vocab = vocabulary()
    specific = [s for s in vocab.structures if s.side != "both"]
    assert len(specific) >= 60 and len(vocab) >= 60
    for s in vocab.structures:
        assert s.zh and any("\u3400" <= ch <= "\u9fff" for ch in s.zh), s.name
        assert s.sources and all(s.sources.values()), s.name
    assert len(vocab.atlases()) >= 5
    # Paired structures exist on both sides, and "both" is exactly their union.
    for s in vocab.structures:
        if s.side == "both":
            left, right = vocab.with_side(s.base, "left"), vocab.with_side(s.base, "right")
            assert left is not None and right is not None, s.base
            for atlas, values in s.sources.items():
                assert set(values) >= set(left.sources.get(atlas, ())) | set(right.sources.get(atlas, ()))
    names = vocab.names()
    assert len(names) == len(set(names))


@pytest.mark.parametrize("text,name", [
    ("Please segment the left caudate.", "left caudate nucleus"),
    ("Please segment the left caudate nucleus.", "left caudate nucleus"),
    ("Segment the R. putamen", "right putamen"),
    ("l. hippocampus", "left hippocampus"),
    ("Where is the hippocampal formation on the right?", "right hippocampus"),
    ("Outline both lateral ventricles.", "lateral ventricle"),
    ("the left lateral ventricles", "left lateral ventricle"),
    ("Delineate the right pallidum", "right globus pallidus"),
    ("Segment the left Heschl's gyrus", "left transverse temporal gyrus"),
    ("segment the left mamillary body", "left mammillary body"),  # British / variant spelling
    ("Segment the HIPPOCAMPI", "hippocampus"),
    ("hippocampus", "hippocampus"),
    ("segment the parahippocampal gyrus, left", "left parahippocampal gyrus"),  # longest name wins
    ("Please segment the brain stem.", "brainstem"),
    ("the 4th ventricle", "fourth ventricle"),
    ("右侧丘脑", "right thalamus"),
    ("请分割左侧海马。", "left hippocampus"),
    ("左海马旁回在哪里？", "left parahippocampal gyrus"),
    ("请分割胼胝体。", "corpus callosum"),
    ("双侧尾状核", "caudate nucleus"),
])
def test_synonyms_and_sides_resolve(text, name):
    s = resolve(text)
    assert s is not None and s.name == name, (text, s)


def test_unsided_name_is_both_sides_and_unknown_text_is_none():
    s = resolve("Please segment the hippocampus.")
    assert s.side == "both" and s.base == "hippocampus"
    assert set(s.sources["aal3"]) == {41, 42}
    assert resolve("third ventricle").side == "midline"
    for text in ("Please segment the white matter.", "What is the modality of this image?", "", "请分割白质。"):
        assert resolve(text) is None, text


def test_atlas_value_gives_the_canonical_name():
    assert name_for("aal3", 41) == "left hippocampus" and name_for("aal3", 42) == "right hippocampus"
    assert name_for("fs_aseg", 11) == "left caudate nucleus" and name_for("fs_aseg", 49) == "right thalamus"
    assert name_for("hammers", 1) == "right hippocampus"  # Hammers writes the side last ("TL hippocampus R")
    assert name_for("neuromorphometrics", 35) == "brainstem"
    assert name_for("fs_aparc", 1024) == "left precentral gyrus" and name_for("fs_aparc", 2035) == "right insula"
    assert name_for("aal3", 143) == "left pulvinar"  # the most specific structure (not "left thalamus")
    assert name_for("aal3", 9999) is None and name_for("no_atlas", 1) is None


def test_chinese_names_extend_to_zh_and_keep_the_glossary():
    for name, zh in ZH_NAMES.items():
        assert to_zh(name) == zh
    assert to_zh("left hippocampus") == "左侧海马" and to_zh("Right Caudate") == "右侧尾状核"
    assert to_zh("hippocampus") == "海马" and to_zh("third ventricle") == "第三脑室"
    assert to_zh("target") == "target"  # unknown names stay as they are
    assert to_zh("Please segment the hippocampus") == "Please segment the hippocampus"  # names only, not sentences


def _head(n: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """A toy head: RAS affine with voxel axis 0 toward the patient's left (LAS), x = 0 at the middle voxel, and a
    blob labelled with AAL3's "left hippocampus" value placed 9-12 mm into the patient's *right* (RAS x > 0)."""
    arr = np.zeros((n, 30, 20), dtype=np.int16)
    arr[8:24 + 9, 5:25, 3:17] = 10  # "brain", centred
    aff = np.diag([-1.0, 1.0, 1.0, 1.0])  # i runs toward patient left (LAS)
    aff[:3, 3] = [(n - 1) / 2, -15, -10]  # voxel (20, ., .) at x = 0
    arr[8:12, 10:14, 8:12] = 41  # i 8..11 -> RAS x = 20 - i = +12..+9 mm
    return arr, aff


def _flip(arr: np.ndarray, aff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy with voxel axis 0 reversed: array and affine flipped together."""
    n = arr.shape[0]
    f = np.eye(4)
    f[0, 0], f[0, 3] = -1, n - 1
    return arr[::-1].copy(), aff @ f


def test_flipped_images_keep_the_patient_side(tmp_path):
    arr, aff = _head()
    blob = arr == 41
    x = (aff[:3, :3] @ np.argwhere(blob).mean(0) + aff[:3, 3])[0]  # RAS x of the blob
    expected = "left" if x < 0 else "right"
    assert expected == "right"
    assert side_of(blob, aff, "RAS") == expected
    farr, faff = _flip(arr, aff)
    assert side_of(farr == 41, faff, "RAS") == expected  # same anatomy, same side
    assert side_of(farr == 41, aff, "RAS") != expected  # array flipped alone: the other side
    # Through files and SimpleITK (LPS), as the server reads them.
    for name, (a, f) in {"orig": (arr, aff), "flip": (farr, faff), "array_only": (farr, aff)}.items():
        nib.save(nib.Nifti1Image(a, f), str(tmp_path / f"{name}.nii.gz"))
    sides = {}
    for name in ("orig", "flip", "array_only"):
        vol = read_volume(str(tmp_path / f"{name}.nii.gz"))
        sides[name] = side_of(vol.array == 41, volume_affine(vol), "LPS")
        point = np.argwhere(vol.array == 41)[0]
        assert side_of(point, volume_affine(vol)) == sides[name]
        named = name_at(vol.array, point, "aal3", volume_affine(vol))
        assert named == f"{sides[name]} hippocampus"  # the side follows the geometry, not the label value
    assert sides["orig"] == sides["flip"] == expected and sides["array_only"] != expected


def test_side_relative_to_the_brain_mask_centre():
    arr, aff = _head()
    shifted = aff.copy()
    shifted[0, 3] += 100.0  # the world origin is far from the head: x = 0 is no longer the midline
    blob, brain = arr == 41, arr > 0
    truth = side_of(blob, aff, "RAS")
    assert side_of(blob, shifted, "RAS", midline=brain) == truth
    assert side_of(blob, shifted, "RAS", midline=100.0) == truth  # RAS x of the middle voxel (i = 20)
    s = structure_at("hippocampus", blob, shifted, "RAS", midline=brain)
    assert s.name == f"{truth} hippocampus"
    assert structure_at("third ventricle", blob, aff, "RAS").name == "third ventricle"  # midline stays unsided
    assert side_of([[20, 5, 5]], aff, "RAS", tolerance_mm=0.5) == "midline"


def test_a_named_structure_to_locate_is_a_grounding_target():
    from medplib_label.infers.prompts import names_a_target, wants_mask

    assert wants_mask("Where is the left hippocampus?") and wants_mask("左侧海马在哪里？")
    assert wants_mask("Please segment the left caudate.")
    assert names_a_target("Can you find the right putamen?")
    assert not wants_mask("What is the modality of this image?") and not wants_mask("What is this structure?")
    assert not wants_mask("Is the left hippocampus atrophic?")  # a question about it, not a request to locate it
    assert not names_a_target("Where is the lesion?")


def test_info_offers_the_vocabulary_and_labels_stay_short():
    from medplib_label.main import DEFAULT_LABELS, vocabulary_info

    info = vocabulary_info()
    assert info["count"] == len(info["names"]) >= 60
    assert {"left caudate nucleus", "right thalamus", "hippocampus"} <= set(info["names"])
    assert "aal3" in info["atlases"] and (ROOT / info["table"]).is_file()
    assert DEFAULT_LABELS == ["brain", "grey matter", "white matter", "csf", "target"]


@pytest.mark.skipif(importlib.util.find_spec("deepmriprep") is None
                    or importlib.util.find_spec("smriprep_freesurfer732") is None,
                    reason="the atlas wheels are not installed (sample_data/README.md, Vocabulary)")
def test_committed_table_is_what_the_installed_atlases_give():
    sys.path.insert(0, str(ROOT / "sample_data"))
    try:
        import build_vocabulary as bv
    finally:
        sys.path.pop(0)
    rows = bv.build_rows(bv.read_atlases(bv.site_packages(), check=False))
    with open(TABLE, encoding="utf-8", newline="") as fh:
        assert list(csv.DictReader(fh)) == rows
