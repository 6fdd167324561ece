"""The FastAPI app `make serve` runs: MONAI Label's own app with a non-blocking, bounded `/infer/{model}`.

MONAI Label's endpoints are `async def` and call inference directly, so one running infer blocks every other
request (even `/info`). Here `/infer` runs MONAI Label's own request handling in worker threads, behind a bounded
queue; there is one model copy, and concurrent slice questions are answered together in batches by the engine's
batcher (`batcher.py`):
  * the event loop stays free: `/info`, `/train` status, datastore calls answer while a model runs;
  * a full queue answers 503 with Retry-After instead of piling up requests;
  * a request that waits or runs longer than its timeout answers 503 (the worker finishes it and moves on);
  * any failure inside the model (an exception, out of memory) fails only that request, with a 503 and a clear
    message; bad input keeps its 4xx.
Start with `monailabel start_server ... --uvicorn_app medplib_label.server:app`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from fastapi.responses import JSONResponse
from monailabel.app import app
from monailabel.config import RBAC_USER, settings
from monailabel.endpoints import infer as infer_endpoints
from monailabel.endpoints import session as session_endpoints
from monailabel.endpoints import wsi_infer as wsi_endpoints
from monailabel.endpoints.infer import ResultType, run_inference
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.exception import MONAILabelException

from .datastore import check_id
from .sessions import router as session_router

logger = logging.getLogger(__name__)

MAX_QUEUE = int(os.environ.get("MEDPLIB_MAX_QUEUE", "16"))  # running + waiting infer requests
# Requests in flight at once: their slice questions meet in the model batcher (`batcher.py`); the model itself
# is used by one thread at a time.
WORKERS = int(os.environ.get("MEDPLIB_INFER_WORKERS", "8"))
TIMEOUT_S = float(os.environ.get("MEDPLIB_INFER_TIMEOUT", str(settings.MONAI_LABEL_INFER_TIMEOUT)))
RETRY_AFTER_S = 2


class InferQueue:
    """Worker threads off the event loop, a bounded number of requests in flight, per-request timeouts."""

    def __init__(self, max_queue: int, timeout_s: float, workers: int = 1):
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.workers = max(1, workers)
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medplib-infer")
        self._depth = 0
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        return self._depth

    async def submit(self, fn, timeout_s: float | None = None):
        with self._lock:
            if self._depth >= self.max_queue:
                raise HTTPException(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
                                    detail=f"server busy: {self._depth} inference requests queued; retry later")
            self._depth += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn)
        future.add_done_callback(lambda _: self._release())  # counts until the work really ends
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s or self.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
                                detail=f"inference timed out after {timeout_s or self.timeout_s:.0f} s") from None

    def _release(self) -> None:
        with self._lock:
            self._depth -= 1


QUEUE = InferQueue(MAX_QUEUE, TIMEOUT_S, WORKERS)


def _from_token(token: str):
    """MONAI Label 0.8.5's auth calls jwt.decode without `algorithms`, which PyJWT 2 rejects, so with auth enabled
    every token was refused. Same claims logic, with the algorithms Keycloak signs with."""
    import jwt
    from monailabel.endpoints.user import auth

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return auth.DEFAULT_USER
    key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    payload = jwt.decode(token, key, algorithms=["RS256", "RS384", "RS512", "ES256", "PS256"],
                         options={"verify_signature": True, "verify_aud": False, "verify_exp": True})
    roles = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(part) if isinstance(roles, dict) else None
    return auth.User(username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME),
                     email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                     name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME), roles=list(roles or []))


def _patch_auth() -> None:
    from monailabel.endpoints.user import auth

    auth.from_token = _from_token  # get_current_user looks the name up at call time


_patch_auth()

# Take MONAI Label's blocking /infer router and its /session router out of the app (FastAPI keeps included
# routers as entries that point at the original router) and mount ours in their place. The WSI infer endpoints go
# too: this radiology app has no WSI models, and they answer a missing image with a 500.
_REPLACED = (infer_endpoints.router, session_endpoints.router, wsi_endpoints.router)
app.router.routes = [r for r in app.router.routes
                     if getattr(r, "original_router", None) not in _REPLACED
                     and not any(getattr(r, "endpoint", None) is e.endpoint for rt in _REPLACED for e in rt.routes)]
router = APIRouter(prefix=settings.MONAI_LABEL_API_STR + "/infer", tags=["Infer"])


def _guarded(fn):
    """A failure inside the model fails only this request, as a 503; input errors keep their 4xx (they reach the
    app-level exception handlers below, which serve MONAI Label's own endpoints too)."""
    def run():
        try:
            return fn()
        except (HTTPException, MONAILabelException, FileNotFoundError, ValueError):
            raise
        except Exception as exc:  # includes torch.OutOfMemoryError: fail this request, keep serving
            logger.exception("inference failed")
            raise HTTPException(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
                                detail=f"inference failed: {type(exc).__name__}: {exc}") from None
    return run


@router.post("/{model}", summary=f"{RBAC_USER}Run Inference for supported model (non-blocking, bounded queue)")
async def api_run_inference(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: Optional[ResultType] = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    if not (image or session_id or file):
        raise HTTPException(status_code=422, detail="image: give an image id, a session_id or an uploaded file")
    return await QUEUE.submit(_guarded(lambda: run_inference(background_tasks, model, image, session_id, params,
                                                             file, label, output)))


app.include_router(router)
app.include_router(session_router)

ID_PARAMS = ("image", "id", "label", "tag", "session_id", "strategy")


# MONAI Label's own endpoints let bad input escape as 500s; answer it as what it is.
@app.exception_handler(MONAILabelException)
async def _monailabel_error(request, exc: MONAILabelException):
    status = 404 if "not found" in exc.msg.lower() or "no model" in exc.msg.lower() else 422
    return JSONResponse({"detail": exc.msg}, status_code=status)


@app.exception_handler(FileNotFoundError)
async def _not_found(request, exc: FileNotFoundError):
    return JSONResponse({"detail": f"not found: {exc}"}, status_code=404)


@app.exception_handler(ValueError)  # includes json.JSONDecodeError from malformed `params`/`info` forms
async def _bad_value(request, exc: ValueError):
    return JSONResponse({"detail": f"invalid params or input: {exc}"}, status_code=422)


@app.middleware("http")
async def refuse_unsafe_ids(request, call_next):
    """Ids and tags in query strings become file names in the datastore: refuse traversal and injection."""
    for name in ID_PARAMS:
        if name in request.query_params:
            try:
                check_id(name, request.query_params[name])
            except HTTPException as exc:
                return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    return await call_next(request)


@app.get("/medplib/queue", summary=f"{RBAC_USER}Inference queue depth and limits")
async def queue_status():
    from monailabel.interfaces.utils.app import apps

    status = {"depth": QUEUE.depth, "max_queue": QUEUE.max_queue, "timeout_s": QUEUE.timeout_s,
              "workers": QUEUE.workers}
    for instance in list(apps.values()):  # the app, once built (no model is loaded for this)
        engine = getattr(instance, "engine", None)
        if engine is not None:
            status.update(engine.serving_stats())
    return JSONResponse(status)
