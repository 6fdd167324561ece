"""Segment-anything-style predictor: `set_image` caches both branches' features, `ask` is then cheap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from transformers import DynamicCache

from medplib.imaging.preprocess import (
    Window,
    clip_pixel_values,
    logit,
    prepare_rgb,
)
from medplib.imaging.regions import Region, from_dataset, rasterize
from medplib.model.conversation import (
    IM_END,
    IMAGE_TOKEN_INDEX,
    Turn,
    answer_ids,
    build_input_ids,
    with_region_markers,
)
from medplib.model.mask_io import mask_branch_logits, mask_branch_pixels, to_mask_branch_frame
from medplib.model.modeling import MedPLIBForCausalLM
from medplib.model.region_pixels import region_inputs


@dataclass
class ImageFeatures:
    """Everything `ask` needs about the current image."""

    original_size: tuple[int, int]
    resize: tuple[int, int]  # (h', w') inside the SAM input frame
    image_tokens: torch.Tensor  # [P, hidden] after the projector
    patch_feats: torch.Tensor  # [P, C] CLIP features (for region pooling)
    sam_embedding: torch.Tensor  # [1, 256, 16, 16]
    clip_pixels: torch.Tensor | None = None  # [3, S, S], kept only by models with fine region features
    region_pixels: torch.Tensor | None = None  # [dim, S/4, S/4], computed on the first region question

    def region_pixel_map(self, model: MedPLIBForCausalLM) -> torch.Tensor:
        """The fine region feature map, computed once per image and only when a region is asked about."""
        if self.region_pixels is None:
            self.region_pixels = model.encode_region_pixels(self.clip_pixels[None])[0]
        return self.region_pixels

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.image_tokens, self.patch_feats, self.sam_embedding, self.clip_pixels,
                            self.region_pixels) if t is not None]


def encode_batch(model: MedPLIBForCausalLM, images: Sequence[np.ndarray], windows: Sequence[Window | None],
                 for_regions: bool = True) -> tuple[list[ImageFeatures], dict[str, float]]:
    """Both branches' features of several images with one CLIP and one SAM encoder call; per-image ms.

    `for_regions=False` (grounding only) does not keep what region questions would need later.
    """
    cfg = model.config
    t0 = model.clock()
    rgbs = [prepare_rgb(image, window) for image, window in zip(images, windows)]
    for rgb in rgbs:
        if min(rgb.shape[:2]) < 2:
            raise ValueError(f"image too small: {rgb.shape[:2]}")
    clip_px = torch.stack([clip_pixel_values(rgb, cfg.vision.image_size) for rgb in rgbs])
    sam = [mask_branch_pixels(rgb, cfg.sam) for rgb in rgbs]
    t1 = model.clock()
    image_tokens, patches = model.encode_images(clip_px)
    t2 = model.clock()
    sam_embedding = model.encode_sam(torch.stack([px for px, _ in sam]))
    t3 = model.clock()
    keep_pixels = for_regions and bool(cfg.region_pixel_dim)
    feats = [ImageFeatures(rgb.shape[:2], tuple(resize), image_tokens[i], patches[i], sam_embedding[i:i + 1],
                           clip_px[i].clone() if keep_pixels else None)  # own storage: cache bytes stay true
             for i, (rgb, (_, resize)) in enumerate(zip(rgbs, sam))]
    n = len(rgbs)
    timings = {"preprocess": (t1 - t0) * 1e3 / n, "clip_encoder": (t2 - t1) * 1e3 / n,
               "sam_encoder": (t3 - t2) * 1e3 / n}
    if n > 1:
        timings["batch"] = float(n)
    return feats, timings


@torch.no_grad()
def set_images(predictors: Sequence["MedPLIBPredictor"], images: Sequence[np.ndarray],
               windows: Sequence[Window | None]) -> None:
    """`set_image` for several predictors of one model, with one encoder call per branch."""
    if not predictors:
        return
    feats, timings = encode_batch(predictors[0].model, images, windows)
    for pred, f in zip(predictors, feats):
        pred.reset_image()
        pred.features = f
        pred.counters["clip_encoder"] += 1
        pred.counters["sam_encoder"] += 1
        pred.last_timings = dict(timings)


@dataclass
class _Prepared:
    """A question ready for the LLM (see `MedPLIBPredictor._prepare`)."""

    ids: list[int]
    past: object  # the image-prefix KV cache (None without prefix caching)
    embeds: torch.Tensor  # [L, hidden] what follows the cached prefix
    draft: list[int] | None
    timings_ms: dict[str, float]
    new_prefix: tuple[list[int], int] | None = None  # (prefix ids, length) when `past` is a new, empty cache


@dataclass
class Answer:
    """Result of `ask`: text without special tokens, one mask per <SEG> in order, per-stage timings."""

    text: str
    masks: np.ndarray  # bool [n_seg, H, W]
    mask_logits: np.ndarray  # float32 [n_seg, H, W]
    iou_predictions: list[float]
    token_ids: list[int]
    prompt: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def seg_count(self) -> int:
        return int(self.masks.shape[0])


class MedPLIBPredictor:
    """Cache an image's features once, then ask any number of questions about it."""

    def __init__(self, model: MedPLIBForCausalLM, tokenizer, mask_threshold: float | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.mask_threshold = model.config.mask_threshold if mask_threshold is None else mask_threshold
        self.features: ImageFeatures | None = None
        # How often each stage really ran (tests and benchmarks prove caching with these, not with timings).
        self.counters = {"clip_encoder": 0, "sam_encoder": 0, "prefill": 0, "image_prefill": 0, "mask_decoder": 0}
        self.prefix_cache = True  # re-use the KV cache of "system + image" across questions on one image
        self._prefix: tuple[list[int], object, int] | None = None  # (prefix ids, DynamicCache, cached length)
        self._last_seg: torch.Tensor | None = None  # <SEG> prompts of the last grounded answer (for refine)
        self._last_answer: "Answer | None" = None
        self.last_timings: dict[str, float] = {}
        self.last_region_masks: list[np.ndarray] = []

    # ------------------------------------------------------------------ image
    @torch.no_grad()
    def set_image(self, image: np.ndarray, window: Window | None = None) -> None:
        """Compute and cache CLIP tokens, CLIP patch features and the SAM embedding of a 2D image.

        `image` is a 2D scalar slice (windowed to uint8 by `window` or robust percentiles) or HxWx3 uint8 RGB.
        """
        set_images([self], [image], [window])

    def memory_bytes(self) -> int:
        """Bytes held by the cached image features and the image-prefix KV cache."""
        total = 0
        if self.features is not None:
            total += sum(t.numel() * t.element_size() for t in self.features.tensors())
        if self._prefix is not None:
            for layer in self._prefix[1].layers:
                total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values) if t is not None)
        return total

    def reset_image(self) -> None:
        self.features = None
        self._prefix, self._last_seg, self._last_answer = None, None, None

    # ------------------------------------------------------------------ ask
    @torch.no_grad()
    def ask(self, question: str, regions: Sequence[Region] = (), points: np.ndarray | None = None,
            point_labels: np.ndarray | None = None, box: Sequence[float] | None = None,
            history: Sequence[Turn] = (), max_new_tokens: int | None = None, temperature: float = 0.0,
            seed: int | None = None, draft_answer: str | None = None) -> Answer:
        """Answer a question about the cached image.

        regions: region prompts (Point/Box/Scribble/mask) pooled into the question, one `<region>` each.
        points/point_labels/box: native SAM prompts in (row, col) / (x1, y1, x2, y2) image pixels, added to the
        mask decoder together with each <SEG> embedding.
        draft_answer: the answer expected (e.g. the grounding template), verified in one forward pass; the result
        is exactly that of greedy decoding (see `MedPLIBForCausalLM.generate`).
        """
        prep = self._prepare(question, regions, history, draft_answer)
        gen = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        past = prep.past
        out = self.model.generate(prep.embeds.unsqueeze(0), max_new_tokens or self.model.config.max_new_tokens,
                                  temperature, gen, past_key_values=past, draft=prep.draft)
        if prep.new_prefix is not None:  # the first question on this image also filled the image prefix
            self._prefix = (prep.new_prefix[0], past, prep.new_prefix[1])
            self.counters["image_prefill"] += 1
        if past is not None:
            extra = past.get_seq_length() - self._prefix[2]
            if extra > 0:  # drop this question's tokens; the image prefix stays for the next one
                past.crop(-extra)
        return self._finish(prep, out, points, point_labels, box)

    def _prepare(self, question: str, regions: Sequence[Region], history: Sequence[Turn],
                 draft_answer: str | None) -> "_Prepared":
        """Everything before the LLM call: prompt ids, region features, the image-prefix cache, the draft."""
        feats = self._require_image()
        t0 = self.model.clock()
        question = question.strip()
        if not question:
            raise ValueError("question is empty")
        if regions:
            question = with_region_markers(question, len(regions))
        region_masks = [rasterize(r, feats.original_size, self.model.config.point_span) for r in regions]
        self.last_region_masks = region_masks  # what the model received (inspected by geometry tests)
        grids, coverages = region_inputs(self.model.config, region_masks, from_dataset(regions))
        region_feats = None
        if grids:
            pixel_map = feats.region_pixel_map(self.model) if coverages else None
            region_feats = self.model.region_features(feats.patch_feats, grids, pixel_map, coverages or None)
        turns = list(history) + [Turn(question)]
        ids, _ = build_input_ids(self.tokenizer, self.model.config.system_prompt, turns)
        t1 = self.model.clock()
        past, rest, new_prefix = self._prefix_split(ids, feats)
        embeds = self.model.embed_sequence(rest, feats.image_tokens if IMAGE_TOKEN_INDEX in rest else None,
                                           region_feats)
        draft = None
        if draft_answer:
            draft = answer_ids(self.tokenizer, draft_answer)  # as in training
        return _Prepared(ids, past, embeds, draft, {"prompt": (t1 - t0) * 1e3}, new_prefix)

    def _finish(self, prep: "_Prepared", out, points, point_labels, box) -> Answer:
        """Everything after the LLM call: <SEG> states -> masks, the text, timings."""
        self.counters["prefill"] += 1
        t2 = self.model.clock()
        text_embeds = self.model.seg_to_prompt(out.seg_hidden) if out.seg_hidden.shape[0] else None
        logits, ious = self._masks(text_embeds, points, point_labels, box)
        return self._answer(prep, out, text_embeds, logits, ious, (self.model.clock() - t2) * 1e3)

    def _answer(self, prep: "_Prepared", out, text_embeds, logits: np.ndarray, ious: list[float],
                mask_ms: float) -> Answer:
        if text_embeds is not None:
            self._last_seg = text_embeds
        text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True).strip()
        timings = {**self.last_timings, **prep.timings_ms, **out.timings_ms, "mask": mask_ms}
        answer = Answer(text=text, masks=logits > logit(self.mask_threshold), mask_logits=logits,
                        iou_predictions=ious, token_ids=out.token_ids,
                        prompt=self.tokenizer.decode([i for i in prep.ids if i >= 0]), timings_ms=timings)
        if text_embeds is not None:
            self._last_answer = answer
        return answer

    def _prefix_split(self, ids: list[int], feats: ImageFeatures):
        """(KV cache to continue, the ids still to run, new prefix or None).

        The prefix (system prompt + image tokens, up to <im_end>) is the same for every question on an image, so
        its KV cache is kept: later questions only run their own few tokens. The first question runs the prefix,
        its own tokens and its draft in one pass into a new cache, cropped back to the prefix afterwards.
        """
        im_end = self.tokenizer.convert_tokens_to_ids(IM_END)
        if not self.prefix_cache or im_end not in ids:
            return None, ids, None
        cut = ids.index(im_end) + 1
        prefix = ids[:cut]
        if self._prefix is not None and self._prefix[0] == prefix:
            return self._prefix[1], ids[cut:], None
        self._prefix = None
        return DynamicCache(), ids, (prefix, cut - 1 + feats.image_tokens.shape[0])

    @torch.no_grad()
    def refine(self, points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
               box: Sequence[float] | None = None) -> Answer:
        """Refinement clicks on the last grounded answer: the same <SEG> embeddings plus SAM point/box prompts.

        Runs only the prompt encoder and the mask decoder (no encoder, no LLM).
        """
        if self._last_seg is None or self._last_answer is None:
            raise RuntimeError("refine() needs a grounded answer (with a mask) on the current image first")
        t0 = self.model.clock()
        logits, ious = self._masks(self._last_seg, points, point_labels, box)
        last = self._last_answer
        return Answer(text=last.text, masks=logits > logit(self.mask_threshold), mask_logits=logits,
                      iou_predictions=ious, token_ids=last.token_ids, prompt=last.prompt,
                      timings_ms={"mask": (self.model.clock() - t0) * 1e3})

    def _masks(self, text_embeds: torch.Tensor | None, points, point_labels, box) -> tuple[np.ndarray, list[float]]:
        feats = self._require_image()
        h, w = feats.original_size
        if text_embeds is None:
            return np.zeros((0, h, w), np.float32), []
        n = text_embeds.shape[0]
        sam_points = sam_box = None
        if points is not None:
            coords = self._to_sam_frame(np.asarray(points, np.float32).reshape(-1, 2)[:, ::-1])  # -> (x, y)
            labels = np.ones(len(coords)) if point_labels is None else np.asarray(point_labels)
            sam_points = (torch.from_numpy(coords)[None].expand(n, -1, -1).to(self.model.device),
                          torch.as_tensor(labels, dtype=torch.int64)[None].expand(n, -1).to(self.model.device))
        if box is not None:
            x1, y1, x2, y2 = (float(v) for v in box)
            corners = self._to_sam_frame(np.array([[min(x1, x2), min(y1, y2)], [max(x1, x2), max(y1, y2)]], np.float32))
            sam_box = torch.from_numpy(corners.reshape(1, 4)).expand(n, -1).to(self.model.device)
        low_res, iou = self.model.decode_masks(feats.sam_embedding, text_embeds, sam_points, sam_box)
        self.counters["mask_decoder"] += 1
        full = mask_branch_logits(low_res.float(), feats.resize, feats.original_size, self.model.config.sam)[:, 0]
        return full.cpu().numpy().astype(np.float32), iou[:, 0].float().cpu().tolist()

    def _to_sam_frame(self, xy: np.ndarray) -> np.ndarray:
        """Image (x=col, y=row) pixels -> the mask branch's input frame."""
        return to_mask_branch_frame(xy, self._require_image().original_size, self.model.config.sam)

    def _require_image(self) -> ImageFeatures:
        if self.features is None:
            raise RuntimeError("call set_image() before ask()")
        return self.features
