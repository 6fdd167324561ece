"""Dynamic batching of concurrent slice questions onto the one model copy.

Infer requests run in several worker threads (see `server.py`); each slice question is handed to this batcher and
its thread waits. One model thread takes whatever questions are waiting (up to `max_batch`, after at most
`wait_s` for more once the model is free) and answers them together with `medplib.inference.batch_ask`: one CLIP and one
SAM encoder call for the new slices, one LLM pass for the new slices' image prefixes together with every
question and its draft (a group per cached-prefix length), batched greedy decoding, one mask-decoder call.
A lone request is not delayed by more than `wait_s`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medplib.imaging.preprocess import Window
from medplib.inference.batch_ask import AskJob, ask_batch
from medplib.inference.predictor import Answer, MedPLIBPredictor, set_images

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    key: tuple
    plane: np.ndarray
    window: Window
    question: str
    kwargs: dict[str, Any]
    future: Future = field(default_factory=Future)


class ModelBatcher:
    """Collects slice questions from many threads and answers them in batches on one model thread."""

    def __init__(self, engine, max_batch: int = 8, wait_s: float = 0.005):
        self.engine = engine
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue[_Request] = queue.Queue()
        self.batches = 0
        self.batched_requests = 0
        self.largest_batch = 0
        self._thread = threading.Thread(target=self._loop, name="medplib-batcher", daemon=True)
        self._thread.start()

    def ask(self, key: tuple, plane: np.ndarray, window: Window, question: str, **kwargs) -> tuple[Answer, bool]:
        """Blocks until this question's batch has run; (answer, features were cached) or the job's exception."""
        request = _Request(key, plane, window, question, kwargs)
        self._queue.put(request)
        return request.future.result()

    def stats(self) -> dict[str, float]:
        mean = self.batched_requests / self.batches if self.batches else 0.0
        return {"batches": self.batches, "requests": self.batched_requests, "mean_batch": round(mean, 2),
                "largest_batch": self.largest_batch, "waiting": self._queue.qsize()}

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                self._run(batch)
            except BaseException as exc:  # e.g. out of memory: fail these requests, keep the thread alive
                logger.exception("batched inference failed")
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)

    def _run(self, batch: list[_Request]) -> None:
        engine = self.engine
        model, tok = engine.get()
        with engine.lock:
            preds: dict[tuple, MedPLIBPredictor] = {}
            cached: dict[tuple, bool] = {}
            new: dict[tuple, _Request] = {}
            for request in batch:
                if request.key in preds or request.key in new:
                    continue
                pred = engine.features.get(request.key)
                if pred is not None:
                    preds[request.key], cached[request.key] = pred, True
                else:
                    new[request.key] = request
            fresh = [MedPLIBPredictor(model, tok, mask_threshold=engine.settings.threshold) for _ in new]
            try:
                set_images(fresh, [r.plane for r in new.values()], [r.window for r in new.values()])
            except ValueError:  # a bad image: encode the others one by one so only its request fails
                fresh = self._encode_one_by_one(fresh, list(new.values()))
            for (key, request), pred in zip(new.items(), fresh):
                if isinstance(pred, Exception):
                    request.future.set_exception(pred)
                    continue
                preds[key], cached[key] = pred, False
            todo = [r for r in batch if r.key in preds and not r.future.done()]
            answers = ask_batch([AskJob(preds[r.key], r.question, **r.kwargs) for r in todo])
            for key, pred in preds.items():  # store after asking: the entry's size includes its prefix cache
                engine.features.put(key, pred)
        self.batches += 1
        self.batched_requests += len(todo)
        self.largest_batch = max(self.largest_batch, len(todo))
        for request, answer in zip(todo, answers):
            if isinstance(answer, Exception):
                request.future.set_exception(answer)
            else:
                request.future.set_result((answer, cached[request.key]))

    @staticmethod
    def _encode_one_by_one(preds: list[MedPLIBPredictor], requests: list[_Request]) -> list:
        out: list = []
        for pred, request in zip(preds, requests):
            try:
                pred.set_image(request.plane, request.window)
                out.append(pred)
            except ValueError as exc:
                out.append(exc)
        return out
