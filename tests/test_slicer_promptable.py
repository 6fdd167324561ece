"""The Slicer module's promptable modes (issue #17, Slicer side) through its pure Lib, against the REAL server
(conftest `server`: `monailabel start_server`, LiteMedSAM from the wheel on CPU): the modes `/info` announces and
the combo lists, a box / positive + negative clicks / a lasso upload on a sample-data slice through `medplib_sam`,
"Segment in 3D from these prompts" through `medplib_sam_3d` (coverage parsed by the Lib), and the server's 422
naming `label` for an uploaded region on another voxel grid. Plus the Lib's pure parts (params, session, status).

What this cannot check: Slicer itself (markups placement, writing the planes into the segment's internal labelmap,
Ctrl+Z): the in-Slicer self-test's promptable box step does, see slicer_extension/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "slicer_extension" / "MedPLIBLabel"))

import MedPLIBLabelLib as lib  # noqa: E402
from MedPLIBLabelLib import geometry as g, interaction as ia, promptable as pm, protocol as pr  # noqa: E402
from MedPLIBLabelLib import regions, tasks, volume_io  # noqa: E402

IMAGE = "mni152_t1"  # 1 mm MNI T1 with its final tissue label in the sample datastore
SYNTH = "slicer_promptable_synth"


@pytest.fixture(scope="module")
def client(server) -> lib.MedPLIBClient:
    return lib.MedPLIBClient(server.url, timeout=300)


@pytest.fixture(scope="module")
def mni(studies):
    img = nib.load(str(studies / f"{IMAGE}.nii.gz"))
    brain = np.asanyarray(nib.load(str(studies / "labels" / "final" / f"{IMAGE}.nii.gz")).dataobj) > 0
    return np.asarray(img.affine, dtype=np.float64), tuple(int(s) for s in img.shape[:3]), brain


def _axial(m, voxel) -> np.ndarray:
    """The Red view's SliceToRAS through `voxel` (what the module reads from the slice node)."""
    world = g.ijk_to_ras(voxel, m)
    return g.standard_slice_to_ras("axial", center=world, offset=float(world[2]))


def _label(result) -> np.ndarray:
    return np.asanyarray(nib.load(result.label_path).dataobj)  # IJK


def _quadrant_box(brain, k):
    """IJK corners of one quadrant of the brain's box on axial slice k (an off-centre box)."""
    ii, jj = np.nonzero(brain[:, :, k])
    i0, j0 = (ii.min() + ii.max()) // 2, (jj.min() + jj.max()) // 2
    return (int(i0), int(j0), k), (int(ii.max()), int(jj.max()), k)


# ---------------------------------------------------------------------------------------------------- /info
def test_mode_combo_lists_the_modes_the_server_announces(client):
    info = client.test_connection()
    assert info.models["medplib_sam"].config["modes"] == ["promptable"]
    assert info.models["medplib_sam_3d"].config["modes"] == ["box3d"]
    assert [m for m, _ in ia.available_modes(info)] == ["ask", "promptable", "box3d"]
    assert pm.mode_model(info, "promptable") == "medplib_sam" and pm.mode_model(info, "box3d") == "medplib_sam_3d"
    assert lib.button_states(True, False, True, True, False, True, can_3d=True)["segment3DButton"]


# ---------------------------------------------------------------------------------------------------- 2D
def test_box_on_a_sample_slice_gives_a_mask_inside_the_box(client, mni, tmp_path):
    m, dims, brain = mni
    k = 80
    lo, hi = _quadrant_box(brain, k)
    box = pr.BoxPrompt(corner_a=g.ijk_to_ras(lo, m).tolist(), corner_b=g.ijk_to_ras(hi, m).tolist())
    params = pm.build_promptable_params([box], m, _axial(m, lo), dims=dims, segment_name="brain")
    assert params["roi"] == [lo[0], hi[0], lo[1], hi[1], k, k] and params["slice"] == k and params["axis"] == 2
    assert "question" not in params and "task" not in params and "scope" not in params
    r = client.infer("medplib_sam", IMAGE, params, result_dir=str(tmp_path))
    assert r.task == "promptable" and r.label_names == {"brain": 1} and r.has_masks and r.slice == k
    label = _label(r)
    assert label.shape == dims and not np.delete(label, k, axis=2).any(), "only the prompted slice"
    mask = label[:, :, k] > 0
    outside = mask.copy()
    outside[lo[0] - 2:hi[0] + 3, lo[1] - 2:hi[1] + 3] = False
    quadrant = np.zeros_like(mask)
    quadrant[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1] = brain[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, k]
    print(f"box: {mask.sum()} voxels, {outside.sum()} outside, recall {(mask & quadrant).sum() / quadrant.sum():.3f},"
          f" {pm.promptable_status(r.params, {'brain': int(mask.sum())})}")
    assert mask.any() and outside.sum() <= 0.02 * mask.sum()
    assert (mask & quadrant).sum() >= 0.2 * quadrant.sum()
    assert "IoU estimate" in pm.promptable_status(r.params, {"brain": int(mask.sum())})

    # What the module writes for the next box of the same interaction: base | new mask, never the old mask.
    session = pm.InteractionSession()
    key = ("vol", "seg", "brain", 2, k)
    before = np.zeros_like(mask)
    before[:3, :3] = True  # the segment's content from before the interaction is kept
    first = session.plane(key, before, mask)
    second = session.plane(key, first, np.zeros_like(mask))
    assert np.array_equal(first, before | mask) and np.array_equal(second, before) and session.steps == 2


def test_positive_and_negative_clicks(client, mni, tmp_path):
    m, dims, brain = mni
    k = 80
    ii, jj = np.nonzero(brain[:, :, k])
    ci, cj = int(ii.mean()), int(jj.mean())
    fg = [(ci + di, cj, k) for di in (-20, 0, 20)]
    assert all(brain[v] for v in fg)
    bg = (3, 3, k)
    assert not brain[bg]
    prompts = [pr.PointPrompt(g.ijk_to_ras(v, m).tolist(), positive=True) for v in fg]
    prompts.append(pr.PointPrompt(g.ijk_to_ras(bg, m).tolist(), positive=False))
    params = pm.build_promptable_params(prompts, m, _axial(m, fg[0]), dims=dims, segment_name="brain")
    assert params["foreground"] == [list(v) for v in fg] and params["background"] == [list(bg)]
    r = client.infer("medplib_sam", IMAGE, params, result_dir=str(tmp_path))
    mask = _label(r)[:, :, k] > 0
    precision = float((mask & brain[:, :, k]).sum()) / max(int(mask.sum()), 1)
    print(f"clicks: {mask.sum()} voxels, precision {precision:.3f}, cached {r.params['embedding_cached']}")
    assert r.params["prompts_used"]["foreground"] == 3 and r.params["prompts_used"]["background"] == 1
    assert any(mask[v[0], v[1]] for v in fg) and not mask[bg[0], bg[1]]
    assert precision >= 0.8


def test_lasso_is_uploaded_as_its_region(client, mni, tmp_path):
    m, dims, brain = mni
    k = 80
    ii, jj = np.nonzero(brain[:, :, k])
    centre = np.array([(ii.min() + ii.max()) / 2, (jj.min() + jj.max()) / 2, k + 0.1])
    radius = np.array([(ii.max() - ii.min()) / 2 + 3, (jj.max() - jj.min()) / 2 + 3, 0])
    ring = [g.ijk_to_ras(centre + radius * [np.cos(a), np.sin(a), 0], m).tolist()
            for a in np.linspace(0, 2 * np.pi, 24, endpoint=False)]
    prompts = lib.collect_prompts(lasso=ring)
    s = _axial(m, (int(centre[0]), int(centre[1]), k))
    region = regions.lasso_region(prompts[0], m, s, dims=dims)
    params = pm.build_promptable_params(prompts, m, s, dims=dims, segment_name="brain", has_region=True)
    assert not set(params) & {"foreground", "background", "roi", "scribble"}  # the region is the prompt
    with pytest.raises(pr.PromptError):
        pm.build_promptable_params(prompts, m, s, dims=dims)  # without the upload there is nothing to send
    r = tasks.infer_with_region(client, "medplib_sam", IMAGE, params, region, m, str(tmp_path))
    assert r.params["prompts_used"]["label_region"] == "lasso" and r.label_names == {"brain": 1}
    mask = _label(r)[:, :, k] > 0
    # The server prompts with the filled region's box: the same mask as that box sent as a roi, inside the region.
    jj, ii = np.nonzero(region.plane)  # KJI plane order: rows J, columns I
    roi = [int(ii.min()), int(ii.max()), int(jj.min()), int(jj.max()), k, k]
    same = client.infer("medplib_sam", IMAGE, {"label": "brain", "roi": roi, "slice": k, "axis": 2,
                                               "window": params["window"]} if "window" in params else
                        {"label": "brain", "roi": roi, "slice": k, "axis": 2}, result_dir=str(tmp_path))
    boxed = _label(same)[:, :, k] > 0
    agree = 2 * (mask & boxed).sum() / max(int(mask.sum() + boxed.sum()), 1)
    outside = mask.copy()
    outside[ii.min() - 2:ii.max() + 3, jj.min() - 2:jj.max() + 3] = False
    print(f"lasso: {mask.sum()} voxels, {region.voxels} region voxels, agreement with its box {agree:.3f}")
    assert mask.any() and agree >= 0.95 and outside.sum() <= 0.02 * mask.sum()
    assert not [f for f in Path(tmp_path).iterdir() if f.name.startswith("lasso_")]


# ---------------------------------------------------------------------------------------------------- 3D
@pytest.fixture(scope="module")
def synthetic(client, tmp_path_factory):
    """96 x 96 x 24 voxels at 1 x 1 x 3 mm, uploaded as the module uploads (write_nrrd of a KJI array): a dim body
    on every slice and a bright ellipsoid on slices 8..16."""
    i, j, k = np.meshgrid(np.arange(96), np.arange(96), np.arange(24), indexing="ij")
    body = ((i - 48) / 40) ** 2 + ((j - 48) / 36) ** 2 <= 1
    obj = ((i - 48) / 20) ** 2 + ((j - 46) / 15) ** 2 + ((k - 12) / 4.6) ** 2 <= 1
    data = np.where(obj, 400.0, np.where(body, 150.0, 0.0)) + np.random.RandomState(0).normal(0, 8, obj.shape)
    m = np.diag([-1.0, -1.0, 3.0, 1.0])  # RAS, as Slicer shows an LPS-stored volume
    m[:3, 3] = [40.0, 50.0, -30.0]
    path = str(tmp_path_factory.mktemp("synth") / f"{SYNTH}.nrrd")
    volume_io.write_nrrd(path, data.astype(np.float32).transpose(2, 1, 0), m)
    image_id = client.upload_image(path, SYNTH)
    yield image_id, m, obj
    client.remove_image(image_id)


def test_segment_in_3d_from_a_box(client, synthetic, tmp_path):
    image_id, m, obj = synthetic
    k = 12
    ii, jj = np.nonzero(obj[:, :, k])
    lo, hi = (int(ii.min()), int(jj.min()), k), (int(ii.max()), int(jj.max()), k)
    box = pr.BoxPrompt(g.ijk_to_ras(lo, m).tolist(), g.ijk_to_ras(hi, m).tolist())
    params = pm.build_promptable_params([box], m, _axial(m, lo), dims=obj.shape, segment_name="lesion",
                                        volume=True)
    r = client.infer("medplib_sam_3d", image_id, params, result_dir=str(tmp_path))
    label = _label(r) > 0
    coverage = pm.parse_coverage(r.params)
    planes = pm.covered_planes(label.transpose(2, 1, 0), 2)  # the module's KJI array
    text = pm.promptable_status(r.params, {"lesion": int(label.sum())})
    print(text)
    assert coverage is not None and coverage.count == len(planes) >= 3
    assert (coverage.first, coverage.last, coverage.start) == (planes[0], planes[-1], k)
    assert set(coverage.stopped) == {"up", "down"} and f"{coverage.count} slice(s) covered" in text
    assert 7 <= coverage.first and coverage.last <= 17
    assert r.scope == "volume" and r.has_masks


# ---------------------------------------------------------------------------------------------------- 422
def test_uploaded_region_on_another_grid_is_422_naming_label(client, mni, tmp_path):
    m, dims, brain = mni
    k = 80
    plane = brain[:, :, k].T  # KJI plane order: rows J, columns I
    region = regions.RegionMask(axis=2, index=k, plane=plane, dims=dims)
    params = {"label": "brain", "slice": k, "axis": 2}
    tasks.infer_with_region(client, "medplib_sam", IMAGE, params, region, m, str(tmp_path))  # same grid: fine
    shifted = m.copy()
    shifted[:3, 3] += 0.5 * m[:3, 2]  # half a slice off: same shape, other voxels
    spaced = m.copy()
    spaced[:3, :3] *= 1.5  # other spacing
    flipped = m.copy()
    flipped[:3, 0] *= -1  # other direction
    for what, bad in (("origin", shifted), ("spacing", spaced), ("direction", flipped)):
        for model in ("medplib_sam", "medplib"):
            with pytest.raises(lib.BadRequest) as ei:
                tasks.infer_with_region(client, model, IMAGE, params, region, bad, str(tmp_path))
            assert ei.value.field == "label", (what, model, ei.value)
            assert what in str(ei.value.detail or ei.value), (what, model, ei.value)


# ---------------------------------------------------------------------------------------------------- pure Lib
def test_promptable_params_and_rules_without_a_server():
    m = np.diag([1.0, 1.0, 2.0, 1.0])
    s = _axial(m, (10, 10, 5))
    pt = pr.PointPrompt(g.ijk_to_ras((10, 12, 5), m).tolist())
    p = pm.build_promptable_params([pt], m, s, dims=(40, 40, 20), segment_name="", window=(40, 400),
                                   sam_threshold=0.4, max_slices=3)
    assert p == {"axis": 2, "slice": 5, "label": "target", "window": {"center": 40.0, "width": 400.0},
                 "foreground": [[10, 12, 5]], "sam_threshold": 0.4}  # max_slices only for 3D
    assert pm.build_promptable_params([pt], m, s, dims=(40, 40, 20), volume=True, max_slices=3)["max_slices"] == 3
    for bad in ({"sam_threshold": 1.5}, {"volume": True, "max_slices": -1}):
        with pytest.raises(pr.PromptError):
            pm.build_promptable_params([pt], m, s, dims=(40, 40, 20), **bad)
    with pytest.raises(pr.PromptError):
        pm.build_promptable_params([], m, s, dims=(40, 40, 20))
    assert pm.promptable_segment_name(" tumour ", "brain") == "tumour"
    assert pm.promptable_segment_name("", "brain") == "brain" and pm.promptable_segment_name() == "target"
    kw = dict(connected=True, has_volume=True)
    assert ia.run_on_placement(True, "positive", mode="promptable", **kw) == (True, "")  # no text needed
    assert not ia.run_on_placement(True, "scribble", mode="promptable", **kw)[0]  # a stroke: once finished
    assert ia.run_on_placement(True, "lasso", finished_stroke=True, mode="promptable", **kw)[0]
    assert "3D" in ia.run_on_placement(True, "box", mode="box3d", **kw)[1]
    assert not ia.run_on_placement(True, "positive", mode="ask", **kw)[0]  # ask still needs text
    assert pm.mode_model(None, "promptable") is None
    assert not lib.button_states(True, False, True, True, False, True)["segment3DButton"]
    cov = pm.parse_coverage({"slices_covered": {"count": 0, "first": None, "last": None, "start": 4},
                             "stopped": {"up": "no mask", "down": "no mask"}})
    assert cov.text() == "3D: no slice covered (prompted slice 4); stopped up: no mask, down: no mask."
    assert pm.parse_coverage({}) is None
    vol = np.zeros((6, 5, 4), bool)  # KJI
    vol[2:4, 1, 1] = True
    assert pm.covered_planes(vol, 2) == [2, 3] and pm.covered_planes(vol, 0) == [1]
    internal = np.zeros((8, 7, 6), np.uint8)  # offset (1, 1, 1) inside a larger labelmap
    plane = np.zeros((5, 4), bool)
    plane[1, 2] = True
    lib.write_plane_inplace(internal, plane, 3, 2, 2, (1, 1, 1), (4, 5, 6))
    assert np.array_equal(lib.read_plane_inplace(internal, 3, 2, 2, (1, 1, 1), (4, 5, 6)), plane)
