"""`task: report`: ground each structure and write a short grounded report in MedRegA's style.

One line per structure found: `<ref>name</ref><box>..</box>: area on the slice` (slice scope) or `: volume in mL`
(volume scope, from the voxel spacing). The masks come back as one multi-label file whose `label_names` follow the
lines (line i = value i). Where structures overlap (brain contains grey matter), larger masks are painted first and
smaller ones on top, so each stays visible; areas and volumes are those of each structure's whole mask.
A Chinese question (e.g. 请生成报告) gets the structure names and units in Chinese.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from medplib.data.planes import PlaneMapper
from medplib.data.volumes import Volume, write_label
from medplib.imaging.preprocess import Window, logit
from medplib.inference.batch_ask import AskJob, ask_batch
from medplib.model.bilingual import is_chinese, to_zh
from medplib.model.conversation import GROUND_ANSWER, grounding_question

from .prompts import choose_slice
from .refer import box_text, slice_boxes, volume_boxes
from .request import InferParams
from .volume_scope import ground_volume


def _line(name: str, boxes: list[dict], convention: str, shape, measure: str, zh: bool) -> str:
    """The report line of one structure: its largest component's box (every box is in the response's `boxes`)."""
    shown = to_zh(name) if zh else name
    text = box_text(boxes[:1], convention, shape, names={name: shown}) or f"<ref>{shown}</ref>"
    return f"{text}: {measure}"


def _paint(target: np.ndarray, masks: list[tuple[int, np.ndarray]]) -> None:
    """Write the masks into `target` (a volume, or a slice view of one), largest first."""
    for value, mask in sorted(masks, key=lambda vm: -int(vm[1].sum())):
        target[mask] = value


def slice_report(task, request, p: InferParams, vol: Volume, window: Window, targets: list[str], threshold: float,
                 t_start: float) -> tuple[str, dict[str, Any]]:
    zh = bool(p.question and is_chinese(p.question))
    k = choose_slice(p, vol.shape)
    mapper = PlaneMapper.create(vol.shape, vol.spacing, vol.direction, p.axis, k)
    key = (request["image"], vol.shape, p.axis, k, window)
    other = [a for a in range(3) if a != p.axis]
    pixel_mm2 = float(vol.spacing[other[0]] * vol.spacing[other[1]])
    found: list[tuple[str, np.ndarray]] = []
    with task.engine.lock:
        pred, cached = task.engine.predictor(key, mapper.extract(vol.array), window)
        pred.mask_threshold = threshold
        # every structure's question on this slice in one batch (shared image features and prefix)
        answers = ask_batch([AskJob(pred, grounding_question(name), max_new_tokens=p.max_new_tokens,
                                    draft_answer=GROUND_ANSWER) for name in targets])
        for name, ans in zip(targets, answers):
            if isinstance(ans, Exception):
                raise ans
            if ans.seg_count:
                mask = mapper.plane_to_slice(ans.mask_logits[0], logits=True) > logit(threshold)
                if mask.sum() >= p.min_box_area:
                    found.append((name, mask))
    lines, names, boxes, rows = [], {}, [], []
    for value, (name, mask) in enumerate(found, start=1):
        b = slice_boxes(name, value, mask, mapper, p.min_box_area)
        area = float(mask.sum()) * pixel_mm2
        measure = f"面积 {area:.1f} mm²" if zh else f"{area:.1f} mm² on this slice"
        lines.append(_line(name, b, p.box_format, mapper.model_shape, measure, zh))
        names[name] = value
        boxes += b
        rows.append({"label": name, "value": value, "area_mm2": round(area, 2), "boxes": len(b)})
    label = np.zeros(vol.shape, np.uint8)
    _paint(mapper.slice_view(label), [(value, mask) for value, (_, mask) in enumerate(found, start=1)])
    path = write_label(label, vol, p.result_extension)
    return path, {
        "answer": "\n".join(lines) if lines else ("未发现所列结构。" if zh else "None of the structures was found."),
        "task": "report", "report": rows, "label_names": names, "boxes": boxes, "box_format": p.box_format,
        "box_text": box_text(boxes, p.box_format, mapper.model_shape), "seg_count": len(found), "axis": p.axis,
        "slice": k, "view": mapper.view, "targets": targets, "features_cached": cached,
        "model": task.engine.model_name(),
        "latency_ms": {"total": round((time.perf_counter() - t_start) * 1e3, 2)},
    }


def volume_report(task, request, p: InferParams, vol: Volume, window: Window, targets: list[str],
                  threshold: float, t_start: float) -> tuple[str, dict[str, Any]]:
    zh = bool(p.question and is_chinese(p.question))
    voxel_ml = float(np.prod(vol.spacing)) / 1000.0
    lines, names, boxes, rows, masks = [], {}, [], [], []
    value = 0
    for name in targets:
        mask, _ = ground_volume(task.engine, vol, p.axis, window, grounding_question(name), threshold,
                                p.max_new_tokens, p.largest_cc)
        mask = mask > 0
        if mask.sum() < p.min_box_area:
            continue
        value += 1
        areas = mask.sum(axis=tuple(a for a in range(3) if a != p.axis))
        k = int(np.argmax(areas))  # the slice where the structure is largest carries its text box
        mapper = PlaneMapper.create(vol.shape, vol.spacing, vol.direction, p.axis, k)
        on_slice = slice_boxes(name, value, mapper.slice_view(mask), mapper, p.min_box_area)[:1]
        ml = float(mask.sum()) * voxel_ml
        measure = f"体积 {ml:.2f} mL" if zh else f"{ml:.2f} mL"
        lines.append(_line(name, on_slice, p.box_format, mapper.model_shape, measure, zh))
        names[name] = value
        boxes += volume_boxes(name, value, mask, p.min_box_area)
        rows.append({"label": name, "value": value, "volume_ml": round(ml, 3), "box_slice": k,
                     "box_text": box_text(on_slice, p.box_format, mapper.model_shape)})
        masks.append((value, mask))
    label = np.zeros(vol.shape, np.uint8)
    _paint(label, masks)
    path = write_label(label, vol, p.result_extension)
    return path, {
        "answer": "\n".join(lines) if lines else ("未发现所列结构。" if zh else "None of the structures was found."),
        "task": "report", "scope": "volume", "report": rows, "label_names": names, "boxes": boxes,
        "box_format": p.box_format, "seg_count": len(rows), "axis": p.axis, "targets": targets,
        "model": task.engine.model_name(), "latency_ms": {"total": round((time.perf_counter() - t_start) * 1e3, 2)},
    }
