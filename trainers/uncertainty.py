"""Active learning by model uncertainty: a MONAI Label `ScoringMethod` that stores a per-image score and a
`Strategy` that serves the most uncertain unlabelled image.

Score of an image (`image_uncertainty`): on `n_slices` evenly spaced slices along `axis`, prepared exactly like the
infer task prepares them (radiological plane, isotropic pixels, the image's automatic window), MedPLIB is asked
"Please segment the {name}." for every structure name. Each answer contributes the mean binary entropy of
sigmoid(mask logits) over the slice, divided by ln 2 so it lies in [0, 1] (0: every pixel certain, 1: every pixel at
p = 0.5). An answer without a <SEG> token (no mask at all) counts as maximal uncertainty, 1.0: the model could not
even ground the structure. Several <SEG> masks in one answer are averaged. The image score is the mean over all
(slice, structure) answers.

Stored in the datastore (image info, so it is in datastore_v2.json):
  medplib_uncertainty             the score, float in [0, 1]
  medplib_uncertainty_structures  {structure: score} (its mean over the slices)
  medplib_uncertainty_model       model version: published checkpoint folder @ newest file mtime, or the preset name
  medplib_uncertainty_params      {"structures", "n_slices", "axis"} the score was computed with
  medplib_uncertainty_ts          when it was computed (epoch seconds)
An image is re-scored only when the model version or the params differ from the stored ones (or `force`).

The strategy only reads stored scores, it never runs the model: `/activelearning` blocks the server and Slicer's UI,
while MONAI Label re-runs every scoring method in a subprocess after each `/activelearning` call and after training
(`MONAI_LABEL_AUTO_UPDATE_SCORING`). Unscored unlabelled images rank after every scored one; scores from an older
model still count until they are refreshed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from medplib.data.conversations import load_slice
from medplib.data.volumes import Volume, auto_window, read_volume
from medplib.imaging.preprocess import Window
from medplib.inference.predictor import MedPLIBPredictor
from medplib.model.conversation import grounding_question
from medplib_label.engine import MedPLIBEngine

logger = logging.getLogger(__name__)

KEY = "medplib_uncertainty"
KEY_MODEL = "medplib_uncertainty_model"
KEY_PARAMS = "medplib_uncertainty_params"
KEY_STRUCTURES = "medplib_uncertainty_structures"
KEY_TS = "medplib_uncertainty_ts"
LN2 = math.log(2.0)

PredictorFactory = Callable[..., MedPLIBPredictor]  # (model, tokenizer, mask_threshold=...) -> predictor


def mask_entropy(logits: np.ndarray) -> float:
    """Mean binary entropy of sigmoid(logits), in bits (so in [0, 1]); numerically stable for any |logit|."""
    x = np.asarray(logits, np.float64)
    if x.size == 0:
        return 1.0
    p = 0.5 * (1.0 + np.tanh(0.5 * x))  # sigmoid without overflow
    h = p * np.logaddexp(0.0, -x) + (1.0 - p) * np.logaddexp(0.0, x)  # -p ln p - (1-p) ln(1-p)
    return float(min(max(h.mean() / LN2, 0.0), 1.0))


def answer_uncertainty(mask_logits: np.ndarray) -> float:
    """Uncertainty of one grounding answer: mean over its masks; no <SEG> (no mask) is maximal, 1.0."""
    if mask_logits.shape[0] == 0:
        return 1.0
    return float(np.mean([mask_entropy(m) for m in mask_logits]))


def slice_indices(n: int, n_slices: int) -> list[int]:
    """`n_slices` evenly spaced interior indices of 0..n-1 (fewer when n is small; [0] for a single slice)."""
    return sorted({min(((i + 1) * n) // (n_slices + 1), n - 1) for i in range(max(n_slices, 1))})


def image_uncertainty(source: MedPLIBEngine | Callable[[], MedPLIBPredictor], vol: Volume, window: Window,
                      structures: Sequence[str], n_slices: int = 3, axis: int = 2,
                      max_new_tokens: int | None = None, lock=None, details: dict | None = None) -> float:
    """Mean normalised mask entropy of grounding each structure on `n_slices` slices of `vol` (see module doc).

    source: the app's engine (a fresh predictor per slice on its model, under `engine.lock`; the engine's
    interactive predictor cache is left alone) or a zero-argument callable returning a predictor.
    details: if given, filled with {structure: mean score over the slices}.
    """
    if not structures:
        raise ValueError("no structure names to ground")
    if isinstance(source, MedPLIBEngine):
        engine = source
        lock = engine.lock if lock is None else lock
        max_new_tokens = max_new_tokens or engine.settings.max_new_tokens

        def make() -> MedPLIBPredictor:
            model, tok = engine.get()
            return MedPLIBPredictor(model, tok, mask_threshold=engine.settings.threshold)
    else:
        make = source
    per: dict[str, list[float]] = {name: [] for name in structures}
    for k in slice_indices(vol.shape[axis], n_slices):
        view = load_slice(vol, axis, k, window)
        with lock if lock is not None else contextlib.nullcontext():
            pred = make()
            pred.set_image(view.plane, window)
            for name in structures:
                ans = pred.ask(grounding_question(name), max_new_tokens=max_new_tokens)
                per[name].append(answer_uncertainty(ans.mask_logits))
    if details is not None:
        details.update({name: float(np.mean(v)) for name, v in per.items()})
    return float(np.mean([u for v in per.values() for u in v]))


def model_version(engine: MedPLIBEngine) -> str:
    """What the served model is: the preset name, or the published folder plus its newest file's mtime."""
    folder = engine.published_dir()
    if folder is None:
        return engine.model_name()
    mtimes = []
    for path in Path(folder).iterdir():
        try:
            if path.is_file() and not path.name.endswith(".tmp"):  # the trainer's atomic-write temporaries
                mtimes.append(path.stat().st_mtime)
        except OSError:  # replaced while listing
            continue
    return f"{engine.model_name()}@{max(mtimes, default=0.0):.6f}"


class MedPLIBUncertaintyScoring(ScoringMethod):
    """Scores every unlabelled image by `image_uncertainty` and stores it in the datastore (see module doc).

    Request keys (all optional): `max_images` (0 = no limit), `force` (re-score even when up to date),
    `n_slices`, `axis`, `label_tag`, `labels`. Images never scored go first, then those scored by another model.
    """

    def __init__(self, engine: MedPLIBEngine, structures: Sequence[str], n_slices: int = 3, axis: int = 2,
                 max_images: int = 25, max_new_tokens: int | None = None,
                 predictor_factory: PredictorFactory = MedPLIBPredictor,
                 description: str = "MedPLIB mask entropy of grounding the app's structures on sampled slices"):
        super().__init__(description)
        if not structures:
            raise ValueError("MedPLIBUncertaintyScoring needs at least one structure name")
        self.engine = engine
        self.structures = list(structures)
        self.n_slices = n_slices
        self.axis = axis
        self.max_images = max_images
        self.max_new_tokens = max_new_tokens
        self.predictor_factory = predictor_factory

    def info(self) -> dict[str, Any]:
        return {**super().info(), "key": KEY, "structures": self.structures, "n_slices": self.n_slices,
                "axis": self.axis, "max_images": self.max_images}

    def model_version(self) -> str:
        return model_version(self.engine)

    def __call__(self, request: dict, datastore: Datastore) -> dict[str, Any]:
        t0 = time.time()
        params = {"structures": self.structures, "n_slices": int(request.get("n_slices", self.n_slices)),
                  "axis": int(request.get("axis", self.axis))}
        max_images = int(request.get("max_images", self.max_images) or 0)
        force = bool(request.get("force", False))
        version = self.model_version()  # taken before scoring: a model published meanwhile re-scores next time
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        fresh, stale, todo = [], [], []
        for image_id in images:
            info = datastore.get_image_info(image_id) or {}
            if KEY not in info:
                todo.append(image_id)
            elif force or info.get(KEY_MODEL) != version or info.get(KEY_PARAMS) != params:
                stale.append(image_id)
            else:
                fresh.append(image_id)
        todo += stale
        selected = todo[:max_images] if max_images > 0 else todo
        scores: dict[str, float] = {}
        failed: dict[str, str] = {}
        max_new_tokens = self.max_new_tokens or self.engine.settings.max_new_tokens
        for image_id in selected:
            t_img = time.time()
            try:
                info = datastore.get_image_info(image_id) or {}
                vol = read_volume(datastore.get_image_uri(image_id))
                window = auto_window(vol, info.get("modality"))
                details: dict[str, float] = {}
                score = image_uncertainty(self._predictor, vol, window, self.structures, params["n_slices"],
                                          params["axis"], max_new_tokens, lock=self.engine.lock, details=details)
            except Exception as exc:  # one unreadable image must not stop the others
                logger.exception("uncertainty scoring failed for %s", image_id)
                failed[image_id] = f"{type(exc).__name__}: {exc}"
                continue
            datastore.update_image_info(image_id, {KEY: score, KEY_STRUCTURES: details, KEY_MODEL: version,
                                                   KEY_PARAMS: params, KEY_TS: int(time.time())})
            scores[image_id] = score
            logger.info("uncertainty %s = %.4f (%.2f s)", image_id, score, time.time() - t_img)
        summary = {"total": len(images), "skipped": len(fresh), "executed": len(scores), "failed": failed,
                   "remaining": len(todo) - len(selected), "model": version, "scores": scores,
                   "latency": round(time.time() - t0, 3)}
        logger.info("uncertainty scoring: %s", summary)
        return summary

    def _predictor(self) -> MedPLIBPredictor:
        model, tok = self.engine.get()
        return self.predictor_factory(model, tok, mask_threshold=self.engine.settings.threshold)


class UncertaintyStrategy(Strategy):
    """Serve the unlabelled image with the highest stored `medplib_uncertainty`.

    Ties (scores equal after rounding to `decimals`) go to the image this strategy served least recently (MONAI
    Label records `image_info["strategy"][<strategy name>]["ts"]` on every `/activelearning` call), then by id.
    Unscored images come after all scored ones, least recently served first. Returns None when no image is
    unlabelled (the endpoint then answers `{}`).
    """

    def __init__(self, key: str = KEY, decimals: int = 6,
                 description: str = "Most uncertain unlabelled image (MedPLIB mask entropy)"):
        super().__init__(description)
        self.key = key
        self.decimals = decimals

    def __call__(self, request: dict, datastore: Datastore) -> dict[str, Any] | None:
        _reload_if_changed(datastore)
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        name = request.get("strategy", "uncertainty")
        ranked = []
        for image_id in images:
            info = datastore.get_image_info(image_id) or {}
            score = info.get(self.key)
            score = float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None
            served = (info.get("strategy") or {}).get(name, {}).get("ts", 0)
            ranked.append((score is None, -round(score or 0.0, self.decimals), served, image_id, score))
        ranked.sort(key=lambda r: r[:4])
        best = ranked[0]
        logger.info("%s: selected %s (%s = %s, last served %s) of %d", name, best[3], self.key, best[4], best[2],
                    len(ranked))
        return {"id": best[3], self.key: best[4]}


def _reload_if_changed(datastore: Datastore) -> None:
    """Pick up scores the scoring subprocess wrote when the server does not auto-reload its datastore.

    Without it the server's next write (e.g. the served-at timestamp) would overwrite them with its stale copy.
    LocalDatastore only re-reads datastore_v2.json when its mtime changed; other datastores are left alone.
    """
    reload = getattr(datastore, "_init_from_datastore_file", None)
    if callable(reload):
        try:
            reload()
        except Exception:  # never fail a next-sample request over a refresh
            logger.warning("could not reload the datastore file", exc_info=True)
