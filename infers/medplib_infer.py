"""The MedPLIB MONAI Label infer task: slice-wise VQA, region VQA and grounding, and volume grounding."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medplib.data.planes import PlaneMapper
from medplib.data.volumes import Volume, auto_window, write_label
from medplib.imaging.preprocess import Window, logit
from medplib.model.bilingual import GROUND_ANSWER_ZH, is_chinese, to_zh
from medplib.model.conversation import GROUND_ANSWER, grounding_question
from medplib_label.engine import MedPLIBEngine

from . import atlas_route
from .promptable import SamPrompts, box_mask, has_region_prompts, segment as promptable_segment
from .prompts import PlanePrompts, build_prompts, choose_slice, resolve_task
from .refer import box_text, history_turns, question_boxes, slice_boxes, volume_boxes
from .report import slice_report, volume_report
from .request import InferParams, bad_request, parse_params
from .uploads import read_uploaded_label
from .volume_scope import ground_volume

logger = logging.getLogger(__name__)




class MedPLIBInfer(InferTask):
    """One task class for both published models: `medplib` (interactive, deepgrow-style clicks and ROI plus
    text) and `medplib_seg` (text / label-name auto-segmentation)."""

    def __init__(self, engine: MedPLIBEngine, labels: dict[str, int], type: str = InferType.DEEPGROW,
                 dimension: int = 2, description: str = "MedPLIB", default_task: str = "auto",
                 default_scope: str = "slice"):
        self.engine = engine
        self.app_labels = labels
        self.default_task = default_task
        self.default_scope = default_scope
        super().__init__(type=type, labels=labels, dimension=dimension, description=description,
                         config=self._defaults())

    def _defaults(self) -> dict[str, Any]:
        tasks = ["auto", "ground", "vqa", "region", "report"]
        scopes = ["slice", "volume"]
        return {
            "question": "",
            "task": [self.default_task] + [t for t in tasks if t != self.default_task],
            "scope": [self.default_scope] + [s for s in scopes if s != self.default_scope],
            "axis": 2,
            "largest_cc": False,
            "max_new_tokens": self.engine.settings.max_new_tokens,
            "threshold": self.engine.settings.threshold,
            "result_extension": [".nii.gz", ".nrrd"],
            "box_format": ["medrega", "bird"],
        }

    def is_valid(self) -> bool:
        return True  # the model loads lazily on the first request; /info must stay cheap

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["model"] = self.engine.model_name()
        return info

    # ------------------------------------------------------------------ call
    def __call__(self, request: dict[str, Any]):
        t_start = time.perf_counter()
        p = parse_params(request, self._defaults())
        try:
            vol = self.engine.volume(request["image"])
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=f"image: {exc}") from None
        scribble_mask, segment = None, p.label
        if p.label and _looks_like_file(p.label):
            try:
                scribble_mask = read_uploaded_label(p.label, vol)
            except ValueError as exc:
                raise bad_request("label", str(exc)) from None
            segment = p.label_name
        image_info = request.get("image_info") or {}
        if p.window:
            window = Window(p.window.center, p.window.width)
        else:
            window = self.engine.cached_window(request["image"], lambda: auto_window(vol, image_info.get("modality")))
        threshold = p.threshold if p.threshold is not None else self.engine.settings.threshold
        t_read = time.perf_counter()
        if promptable_route(p, scribble_mask):
            # Region prompts with only a segment name (what the stock Slicer module sends), or a volume from
            # prompts on one slice: LiteMedSAM's promptable mask (the name never changes it).
            name = segment or self._name_in(p.question or "") or self._default_name()
            return promptable_segment(self.engine, request, p, vol, window, name, scribble_mask,
                                      p.scope == "volume", t_start, t_read)
        if p.task == "report":
            if p.foreground or p.background or p.roi or p.scribble or scribble_mask is not None:
                raise bad_request("task", "a report grounds the labels by name; send no region prompts with it")
            targets = p.labels or [n for n in self.app_labels if n != "target"]
            if p.scope == "volume":
                return volume_report(self, request, p, vol, window, targets, threshold, t_start)
            return slice_report(self, request, p, vol, window, targets, threshold, t_start)
        if p.scope == "volume":
            return self._volume(request, p, vol, window, segment, threshold, t_start, t_read)
        return self._slice(request, p, vol, window, segment, scribble_mask, threshold, t_start, t_read)

    def _slice(self, request, p: InferParams, vol: Volume, window: Window, segment, scribble_mask, threshold,
               t_start, t_read):
        k = choose_slice(p, vol.shape)
        mapper = PlaneMapper.create(vol.shape, vol.spacing, vol.direction, p.axis, k)
        prompts = build_prompts(p, mapper, scribble_mask)
        text, text_regions = question_boxes(p.question, mapper)
        if text_regions:  # boxes written in the question are region prompts, like `roi`
            p = p.model_copy(update={"question": text})
            prompts.regions.extend(text_regions)
            prompts.used["text_boxes"] = len(text_regions)
            prompts.used["regions"] = len(prompts.regions)
        history, dropped = history_turns(p)
        key = (request["image"], vol.shape, p.axis, k, window)
        if p.refine:
            task, question = "refine", None
            if prompts.points is None and prompts.box is None:
                raise bad_request("refine", "needs foreground/background points or a roi on the slice")
            with self.engine.lock:
                pred = self.engine.cached_predictor(key)
                if pred is None or pred._last_seg is None:
                    raise bad_request("refine", f"no grounded mask on slice {k} of axis {p.axis} to refine; "
                                                "ask a grounding question on this slice first")
                pred.mask_threshold = threshold
                ans = pred.refine(points=prompts.points, point_labels=prompts.point_labels, box=prompts.box)
            cached = True
            question = pred._last_answer.prompt.rsplit("USER:", 1)[-1].replace("ASSISTANT:", "").strip()
        else:
            task, question = resolve_task(p, prompts, segment)
            # Batched with other clients' questions when several arrive together (the masks are thresholded
            # below with this request's threshold, from the logits).
            ans, cached = self.engine.ask(key, mapper.extract(vol.array), window, question,
                                          **_ask_kwargs(task, prompts), history=history,
                                          max_new_tokens=p.max_new_tokens, draft_answer=_draft(task, question))
        label = np.zeros(vol.shape, np.uint8)
        names, values = self._mask_names(ans.seg_count, segment, question or "")
        logits = list(ans.mask_logits[:len(values)])
        thresholds = [logit(threshold)] * len(values)
        mask_source, box_ms = "medplib", {}
        if task == "ground" and prompts.box is not None and values:
            # The roi decides the first mask (the box alone, through LiteMedSAM); the answer stays MedPLIB's.
            sam_out, encode_ms, decode_ms = box_mask(
                self.engine, request["image"], vol, mapper, window,
                SamPrompts(points=prompts.points, point_labels=prompts.point_labels, box=prompts.box),
                p.sam_threshold)
            logits[0], thresholds[0], mask_source = sam_out.logits, logit(p.sam_threshold), "promptable"
            # Further <SEG> masks merged into the same name would grow the box's mask past what the box gave.
            keep = [0] + [i for i in range(1, len(values)) if values[i] != values[0]]
            logits, thresholds, values = [logits[i] for i in keep], [thresholds[i] for i in keep], \
                [values[i] for i in keep]
            box_ms = {"box_encode": encode_ms, "box_decode": decode_ms}
        for i, value in enumerate(values):
            slice_logits = mapper.plane_to_slice(logits[i], logits=True)
            mapper.slice_view(label)[slice_logits > thresholds[i]] = value
        answer, prior = ans.text, {}
        if task == "ground" and prompts.box is None and len(set(values)) <= 1 and self.engine.atlas.mode != "off":
            # One named vocabulary structure on a whole head: the registered atlases' mask (docs/atlas_prior.md).
            if not names:
                names = {segment or self._name_in(question or "") or self._default_name(): 1}
            prior = atlas_route.ground(self.engine, request["image"], vol, mapper, label, next(iter(names.values())),
                                       atlas_route.named_structure(segment, question or ""))
            mask_source = "atlas_prior" if prior["used"] else mask_source
        elif task == "region" and self.engine.atlas.mode != "off":
            text, prior = atlas_route.name_region(self.engine, request["image"], vol, mapper, prompts.regions,
                                                  question or "")
            answer = text or answer
        boxes = []
        for name, value in names.items():
            boxes += slice_boxes(name, value, mapper.slice_view(label) == value, mapper, p.min_box_area)
        t_model = time.perf_counter()
        path = write_label(label, vol, p.result_extension)
        t_end = time.perf_counter()
        latency = {"read": (t_read - t_start) * 1e3, **{k: round(v, 2) for k, v in ans.timings_ms.items()},
                   **box_ms,
                   "write": (t_end - t_model) * 1e3, "total": (t_end - t_start) * 1e3}
        if cached:
            for stage in ("preprocess", "clip_encoder", "sam_encoder"):
                latency[stage] = 0.0
        result = {
            "answer": answer, "task": task, "question": question,
            "answer_source": "atlas_prior" if answer != ans.text else "medplib", "model_answer": ans.text,
            "label_names": names or {segment or self._name_in(question or "") or self._default_name(): 1},
            # The prior's mask counts as one even when the model gave no <SEG> (Slicer applies only seg_count > 0).
            "seg_count": max(ans.seg_count, 1) if mask_source == "atlas_prior" else ans.seg_count,
            "axis": p.axis, "slice": k, "view": mapper.view,
            "prompts_used": {**prompts.used, "window": {"center": window.center, "width": window.width}},
            "features_cached": cached, "iou_predictions": ans.iou_predictions, "mask_source": mask_source,
            "atlas_prior": prior,
            "boxes": boxes, "box_format": p.box_format,
            "box_text": box_text(boxes, p.box_format, mapper.model_shape),
            "history_used": len(history), "history_dropped": dropped,
            "latency_ms": {k: round(v, 2) for k, v in latency.items()},
            "model": self.engine.model_name(),
        }
        return path, result

    def _volume(self, request, p: InferParams, vol: Volume, window: Window, segment, threshold, t_start, t_read):
        if p.foreground or p.background or p.roi or p.scribble:
            raise bad_request("scope", "volume scope with region prompts propagates them (task auto or ground); "
                                       "region VQA needs scope 'slice'")
        if p.question or segment:
            question = p.question or grounding_question(segment)
            targets = [(segment or self._name_in(question) or self._default_name(), question)]
        else:
            # Auto-segmentation: ground every structure the app offers (except the free "target").
            targets = [(name, grounding_question(name)) for name in self.app_labels if name != "target"]
        label = np.zeros(vol.shape, np.uint8)
        names: dict[str, int] = {}
        answers, per_target, boxes = [], {}, []
        for value, (name, question) in enumerate(targets, start=1):
            mask, prior = None, {}
            if self.engine.atlas.mode != "off":
                mask, prior = atlas_route.volume_mask(self.engine, request["image"], vol, segment, question)
            if mask is not None:
                stats = {"answer": atlas_route.grounded_answer(prior, question), "atlas_prior": prior,
                         "mask_source": "atlas_prior"}
            else:
                mask, stats = ground_volume(self.engine, vol, p.axis, window, question, threshold,
                                            p.max_new_tokens, p.largest_cc)
                stats.update(mask_source="medplib", atlas_prior=prior)
            label[mask > 0] = value
            names[name] = value
            boxes += volume_boxes(name, value, mask, p.min_box_area)
            answers.append(stats.pop("answer"))
            per_target[name] = stats
        t_model = time.perf_counter()
        path = write_label(label, vol, p.result_extension)
        t_end = time.perf_counter()
        return path, {
            "answer": answers[0] if len(answers) == 1 else "; ".join(f"{n}: {a}" for n, a in zip(names, answers)),
            "task": "ground", "question": targets[0][1] if len(targets) == 1 else None, "label_names": names,
            "seg_count": int(sum(1 for v in names.values() if (label == v).any())), "axis": p.axis,
            "scope": "volume", "slices": per_target, "boxes": boxes,
            "latency_ms": {"read": round((t_read - t_start) * 1e3, 2), "model": round((t_model - t_read) * 1e3, 2),
                           "write": round((t_end - t_model) * 1e3, 2), "total": round((t_end - t_start) * 1e3, 2)},
            "model": self.engine.model_name(),
        }

    # ------------------------------------------------------------------ names
    def _default_name(self) -> str:
        return "target" if "target" in self.app_labels else next(iter(self.app_labels))

    def _name_in(self, text: str) -> str | None:
        """The longest app label named in the text (so "grey matter" wins over "matter")."""
        low = text.lower()
        hits = [name for name in self.app_labels if name.lower() in low or to_zh(name) in text]
        return max(hits, key=len) if hits else None

    def _mask_names(self, n: int, segment: str | None, question: str) -> tuple[dict[str, int], list[int]]:
        """(label_names, value of each mask). Names come from the app labels so Slicer keeps the segments.

        The i-th <SEG> goes to the i-th structure named in the question; masks beyond the named structures
        (or all masks, when one segment was asked for) are merged into the last name, never given a name
        that Slicer would silently drop.
        """
        if n == 0:
            return {}, []
        if segment:
            ordered = [segment]
        else:
            positions = {name: _position(question, name) for name in self.app_labels}
            found = sorted((at, name) for name, at in positions.items() if at >= 0)
            # Drop names contained in a longer hit ("matter" inside "white matter").
            ordered = [nm for _, nm in found if not any(nm != other and nm in other for _, other in found)]
            ordered = ordered or [self._default_name()]
        values = [min(i, len(ordered) - 1) + 1 for i in range(n)]
        return {ordered[v - 1]: v for v in sorted(set(values))}, values


def promptable_route(p: InferParams, scribble_mask) -> bool:
    """Whether a `medplib` request is answered by promptable segmentation (docs/params.md, routing rules)."""
    if p.refine or p.task == "report" or not has_region_prompts(p, scribble_mask):
        return False
    if p.scope == "volume":
        return p.task in ("auto", "ground")
    return p.task == "auto" and not p.question


def _ask_kwargs(task: str, prompts: PlanePrompts) -> dict[str, Any]:
    if task == "region":
        return {"regions": prompts.regions}
    if task == "ground":
        # Clicks and the ROI refine the grounded mask through SAM's own point/box prompts.
        return {"points": prompts.points, "point_labels": prompts.point_labels, "box": prompts.box}
    return {}


def _draft(task: str, question: str | None) -> str | None:
    """The answer a grounding request is trained to get: checked in one forward pass (exact greedy result)."""
    if task != "ground":
        return None
    return GROUND_ANSWER_ZH if question and is_chinese(question) else GROUND_ANSWER


def _position(text: str, name: str) -> int:
    """Where a structure is named in a question, by its English name or its Chinese term (-1: not named)."""
    hits = [i for i in (text.lower().find(name.lower()), text.find(to_zh(name))) if i >= 0]
    return min(hits) if hits else -1


def _looks_like_file(value: str) -> bool:
    """MONAI Label puts an uploaded `label` file's path where a segment name would otherwise be."""
    return os.path.sep in value and os.path.isfile(value)
