"""Promptable segmentation served by MONAI Label: clicks / ROI / scribble -> LiteMedSAM mask, on a slice or in 3D.

Two published models (`medplib_sam`: deepgrow 2D, `medplib_sam_3d`: deepgrow 3D) and the `medplib` model's
promptable route (region prompts with only a segment name, or `scope: volume` with region prompts) all end here.
Prompts arrive as IJK voxels, exactly as the stock Slicer module sends them, and are mapped to the slice as the
model sees it (`PlaneMapper`, radiological orientation) by the same code as the MedPLIB prompts
(`infers/prompts.build_prompts`), so validation and 422 messages are the same too.
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from scipy import ndimage

from medplib.data.planes import PlaneMapper
from medplib.data.volumes import Volume, auto_window, write_label
from medplib.imaging.preprocess import Window, logit
from medplib.inference.promptable import PromptMask, mask_box
from medplib.inference.propagate import propagate
from medplib_label.engine import MedPLIBEngine
from medplib_label.promptable_engine import PromptableEngine

from .prompts import build_prompts, choose_slice
from .refer import slice_boxes, volume_boxes
from .request import InferParams, bad_request, parse_params
from .uploads import read_uploaded_label

LASSO_FILL = 0.3  # an uploaded region wider than a line, filling at least this much of its bounding box (after
# hole filling) is a lasso (-> its box); anything else is a stroke (-> points along it)
STROKE_POINTS = 6
MODES = {2: ("promptable",), 3: ("box3d",)}  # /info config.modes, read by the Slicer module
KEEP_SLICES = 16  # embeddings of a 3D result's slices kept in the slice LRU for follow-up clicks


@dataclass
class SamPrompts:
    """Prompts on the model plane, in PromptablePredictor's conventions."""

    points: np.ndarray | None = None  # (row, col)
    point_labels: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 (x = column)
    scribbles: list[list[tuple[float, float]]] = field(default_factory=list)  # strokes of (row, col)
    used: dict = field(default_factory=dict)


def has_region_prompts(p: InferParams, scribble_mask: np.ndarray | None) -> bool:
    return bool(p.foreground or p.background or p.roi is not None or p.scribble or scribble_mask is not None)


def sam_prompts(p: InferParams, mapper: PlaneMapper, scribble_mask: np.ndarray | None) -> SamPrompts:
    """Validate and map every prompt (422 naming the field when it is off the image or off the slice)."""
    plane = build_prompts(p, mapper, scribble_mask)
    out = SamPrompts(points=plane.points, point_labels=plane.point_labels, box=plane.box,
                     used={k: v for k, v in plane.used.items() if k != "regions"})
    if p.scribble:
        out.scribbles.append([mapper.to_plane(ijk) for ijk in p.scribble])
    if scribble_mask is not None:
        region = plane.regions[-1]  # build_prompts appends the uploaded region last
        kind, prompt = region_prompt(np.asarray(region, bool))
        out.used["label_region"] = kind
        if kind == "lasso":
            if out.box is None:
                out.box = prompt
            else:
                out.used["label_region"] = "lasso (ignored: the roi is the box)"
        else:
            out.scribbles.append(prompt)
    return out


def region_prompt(region: np.ndarray):
    """An uploaded region on the plane: ("lasso", its box) when it is a filled area, else ("stroke", points)."""
    filled = ndimage.binary_fill_holes(region)
    rows, cols = np.nonzero(filled)
    box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    thick = ndimage.distance_transform_edt(np.pad(filled, 1)).max() > 2  # a drawn line is 1-4 px wide
    if thick and filled.sum() >= LASSO_FILL * box_area:
        return "lasso", mask_box(filled)
    # A stroke: pixels ordered along its main direction, a few points evenly spaced along it.
    pts = np.stack([rows, cols], axis=1).astype(np.float32)
    centred = pts - pts.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0] if len(pts) > 1 else np.array([1.0, 0.0])
    order = np.argsort(centred @ direction)
    picks = order[np.linspace(0, len(order) - 1, min(STROKE_POINTS, len(order))).round().astype(int)]
    return "stroke", [tuple(map(float, pts[i])) for i in picks]


def _predict(engine: PromptableEngine, features, prompts: SamPrompts, threshold: float) -> tuple[PromptMask, float]:
    pred = engine.predictor(logit(threshold))
    pred.set_embedding(features)
    t0 = time.perf_counter()
    out = pred.predict(points=prompts.points, point_labels=prompts.point_labels, box=prompts.box,
                       scribbles=prompts.scribbles)
    return out, (time.perf_counter() - t0) * 1e3


def box_mask(engine: MedPLIBEngine, image: str, vol: Volume, mapper: PlaneMapper, window: Window,
             plane: SamPrompts, threshold: float) -> tuple[PromptMask, float, float]:
    """LiteMedSAM's mask for a box (and clicks) on one slice: (mask, encode ms, decode ms).

    A grounding question sent with a roi takes its mask from here: on known structures the box alone beats
    box + `<SEG>` (0.627 vs 0.507 Dice, `bench/seg_with_box.py`), and an unknown name only makes it worse.
    """
    sam = engine.sam
    with engine.lock:
        key = sam.key(image, vol.shape, mapper.axis, mapper.index, window)
        features, _, encode_ms = sam.embedding(key, mapper.extract(vol.array), window)
        out, decode_ms = _predict(sam, features, plane, threshold)
    return out, encode_ms, decode_ms


def segment(engine: MedPLIBEngine, request: dict[str, Any], p: InferParams, vol: Volume, window: Window,
            name: str, scribble_mask: np.ndarray | None, volume: bool, t_start: float, t_read: float):
    """The label file and response params of a promptable request (one slice, or propagated through `vol`)."""
    if not has_region_prompts(p, scribble_mask):
        raise bad_request("foreground", "promptable segmentation needs clicks, a roi or a scribble on a slice")
    k = choose_slice(p, vol.shape)
    mapper = PlaneMapper.create(vol.shape, vol.spacing, vol.direction, p.axis, k)
    prompts = sam_prompts(p, mapper, scribble_mask)
    sam = engine.sam
    key = sam.key(request["image"], vol.shape, p.axis, k, window)
    label = np.zeros(vol.shape, np.uint8)
    extra: dict[str, Any] = {}
    with engine.lock:
        features, cached, encode_ms = sam.embedding(key, mapper.extract(vol.array), window)
        first, decode_ms = _predict(sam, features, prompts, p.sam_threshold)
        mapper.slice_view(label)[mapper.plane_to_slice(first.logits, logits=True) > logit(p.sam_threshold)] = 1
        if volume:
            t0 = time.perf_counter()
            extra = _propagate(sam, request["image"], vol, p, k, first, window, label)
            extra["latency_propagate"] = (time.perf_counter() - t0) * 1e3
    t_model = time.perf_counter()
    path = write_label(label, vol, p.result_extension)
    t_end = time.perf_counter()
    latency = {"read": (t_read - t_start) * 1e3, "encode": encode_ms, "decode": decode_ms}
    if volume:
        latency["propagate"] = extra.pop("latency_propagate")
    latency.update(write=(t_end - t_model) * 1e3, total=(t_end - t_start) * 1e3)
    voxels = int(label.sum())
    result = {
        "answer": "", "task": "promptable", "label_names": {name: 1}, "seg_count": int(voxels > 0),
        "axis": p.axis, "slice": k, "view": mapper.view, "scope": "volume" if volume else "slice",
        "prompts_used": {**prompts.used, "window": {"center": window.center, "width": window.width},
                         "threshold": p.sam_threshold},
        "embedding_cached": cached, "iou_prediction": round(first.iou, 4), "candidates": first.candidates,
        "voxels": voxels,
        "boxes": volume_boxes(name, 1, label, p.min_box_area) if volume else
        slice_boxes(name, 1, mapper.slice_view(label) == 1, mapper, p.min_box_area),
        "latency_ms": {k: round(v, 2) for k, v in latency.items()},
        "model": sam.source(),
        **extra,
    }
    if p.question:
        result["question_ignored"] = True  # LiteMedSAM takes no text; the prompts alone decide the mask
    return path, result


def _propagate(sam: PromptableEngine, image: str, vol: Volume, p: InferParams, k: int, first: PromptMask,
               window: Window, label: np.ndarray) -> dict[str, Any]:
    """Propagate the prompted slice's mask through the volume along `p.axis`; fills `label`."""
    def mapper_at(j: int) -> PlaneMapper:
        return PlaneMapper.create(vol.shape, vol.spacing, vol.direction, p.axis, j)

    pred = sam.predictor(logit(p.sam_threshold))
    if not first.mask.any():
        return {"slices_covered": {"count": 0, "first": None, "last": None, "start": k},
                "stopped": {"up": "no mask on the prompted slice", "down": "no mask on the prompted slice"},
                "slices_encoded": 0}
    kwargs: dict[str, Any] = {}
    stack: dict[int, Any] = {}
    if "cache" in inspect.signature(propagate).parameters:  # slices already embedded are not encoded again
        stack = sam.stack_embeddings(image, vol.shape, p.axis, window)
        kwargs["cache"] = stack
    known = set(stack)
    result = propagate(pred, lambda j: mapper_at(j).extract(vol.array), vol.shape[p.axis], k, first,
                       window=window, max_slices=p.max_slices or None, **kwargs)
    for j, mask in result.masks.items():
        if j != k:
            m = mapper_at(j)
            m.slice_view(label)[m.plane_to_slice(np.asarray(mask, bool))] = 1
    covered = sorted(j for j, mask in result.masks.items() if np.asarray(mask).any())
    # Keep the covered slices' new embeddings (where corrections will be clicked), a bounded number of them.
    near = sorted((j for j in covered if j not in known), key=lambda j: abs(j - k))[:KEEP_SLICES]
    sam.keep(image, vol.shape, p.axis, window, stack, near)
    return {"slices_covered": {"count": len(covered), "first": covered[0] if covered else None,
                               "last": covered[-1] if covered else None, "start": k},
            "stopped": _reasons(result.stopped, vol.shape[p.axis]), "slices_encoded": int(result.encoded),
            "ious": {str(j): round(float(v), 4) for j, v in sorted(result.ious.items())}}


def _reasons(stopped: dict[str, str], n_slices: int) -> dict[str, str]:
    """propagate's stop reasons, with the `max_slices` limit named as such (it reports it as the volume's end)."""
    out = {}
    for direction, why in stopped.items():
        head, _, reason = why.partition(": ")
        index = head.removeprefix("slice ")
        if reason == "end of the volume" and index.lstrip("-").isdigit() and 0 <= int(index) < n_slices:
            why = f"{head}: max_slices reached"
        out[direction] = why
    return out


class PromptableInfer(InferTask):
    """`medplib_sam` (dimension 2: the prompted slice) and `medplib_sam_3d` (dimension 3: propagated)."""

    def __init__(self, engine: MedPLIBEngine, labels: dict[str, int], dimension: int = 2, description: str = ""):
        self.engine = engine
        self.app_labels = labels
        super().__init__(type=InferType.DEEPGROW, labels=labels, dimension=dimension, description=description,
                         config=self._defaults(dimension))

    @staticmethod
    def _defaults(dimension: int) -> dict[str, Any]:
        config: dict[str, Any] = {"axis": 2, "sam_threshold": 0.5, "result_extension": [".nii.gz", ".nrrd"]}
        if dimension == 3:
            config["max_slices"] = 0  # per direction; 0: no limit
        return config

    def is_valid(self) -> bool:
        return True  # LiteMedSAM loads on the first request

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["model"] = self.engine.sam.source()
        # The interaction mode this model serves, for the project's Slicer module (MedPLIBLabelLib.interaction
        # MODE_TITLES: "promptable" = clicks / box / scribble / lasso on a slice, "box3d" = the same prompts
        # propagated in 3D). Only in /info: parse_params never sees it (a client echoing it back is ignored).
        info["config"] = {**dict(info.get("config") or {}), "modes": list(MODES[self.dimension])}
        return info

    def __call__(self, request: dict[str, Any]):
        t_start = time.perf_counter()
        p = parse_params(request, self._defaults(self.dimension))
        vol, window, segment, scribble_mask = read_inputs(self.engine, request, p)
        name = segment or ("target" if "target" in self.app_labels else next(iter(self.app_labels)))
        return segment_request(self.engine, request, p, vol, window, name, scribble_mask,
                               volume=self.dimension == 3, t_start=t_start)


def read_inputs(engine: MedPLIBEngine, request: dict[str, Any], p: InferParams):
    """(volume, window, segment name, uploaded region or None) of a request, as the MedPLIB task reads them."""
    try:
        vol = engine.volume(request["image"])
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=f"image: {exc}") from None
    scribble_mask, segment = None, p.label
    if p.label and os.path.sep in p.label and os.path.isfile(p.label):  # an uploaded `label` file
        try:
            scribble_mask = read_uploaded_label(p.label, vol)
        except ValueError as exc:
            raise bad_request("label", str(exc)) from None
        segment = p.label_name
    if p.window:
        window = Window(p.window.center, p.window.width)
    else:
        modality = (request.get("image_info") or {}).get("modality")
        window = engine.cached_window(request["image"], lambda: auto_window(vol, modality))
    return vol, window, segment, scribble_mask


def segment_request(engine, request, p, vol, window, name, scribble_mask, volume, t_start):
    return segment(engine, request, p, vol, window, name, scribble_mask, volume, t_start, time.perf_counter())
