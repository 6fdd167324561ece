"""MedPLIBLabelLib: pure-Python helpers for the MedPLIB Label Slicer module.

Imports only the standard library and numpy (never slicer, qt, ctk, vtk), so it runs and is tested outside
Slicer. Public API (names kept stable for ``MedPLIBLabel.py``):

* errors:   ClientError (``.user_message``), ConnectionRefused, BadURL, Unauthorized, NotFound, BadRequest
            (``.field``), ServerError, Timeout, VersionMismatch
* client:   MedPLIBClient, ServerInfo, ModelInfo, InferResult, normalize_url
* geometry: ObliqueSliceError, SliceOutsideVolumeError, ijk_to_ras, ras_to_ijk, slice_axis_from_normal,
            slice_index, slice_spacing, point_on_view, points_to_ijk, roi_to_ijk, roi_corners_world,
            scribble_to_ijk, standard_slice_to_ras, world_matrix
* protocol: PointPrompt, BoxPrompt, ScribblePrompt, PromptError, build_infer_params, slice_replacement,
            read_slice, write_slice, masks_from_label, label_outside_slice, numpy_axis, ijk_dims
* jobs:     BackgroundJob, JobRunner, JobCancelled, Busy
* history:  ChatTurn, ChatHistory, UndoEntry, UndoStack

Typical flow in the Slicer module (MRML reads/writes on the main thread, HTTP in the job)::

    client = MedPLIBClient(url, token=token, timeout=120)
    info = client.test_connection()                                   # ServerInfo, or a ClientError
    params = build_infer_params(question, prompts,                    # PointPrompt/BoxPrompt/ScribblePrompt (RAS)
                                ijk_to_ras, slice_to_ras, parent,     # 4x4 numpy arrays from the MRML nodes
                                dims=ijk_dims(arrayFromVolume(vol).shape), segment_name=name)
    job = runner.submit(client.infer, "medplib", image_id, params, on_done=apply, on_error=show)
    # apply(result): label = arrayFromVolume(loadLabelVolume(result.label_path)) (KJI), then per segment
    #   previous = write_slice(seg_kji, slice_replacement(label, result.axis, result.slice, value), axis, index)
    #   undo.push(segment_id, result.axis, result.slice, previous, group=turn_id); history.record(...)
    # show(exc): exc.user_message (ClientError, PromptError, ObliqueSliceError all have one)
"""

__version__ = "0.1.0"

from .errors import (BadRequest, BadURL, ClientError, ConnectionRefused, NotFound, ServerError,  # noqa: F401
                     Timeout, Unauthorized, VersionMismatch)
from .client import InferResult, MedPLIBClient, ModelInfo, ServerInfo, normalize_url  # noqa: F401
from .geometry import (ObliqueSliceError, SliceOutsideVolumeError, ijk_to_ras, point_on_view,  # noqa: F401
                       points_to_ijk, ras_to_ijk, roi_corners_world, roi_to_ijk, scribble_to_ijk,
                       slice_axis_from_normal, slice_index, slice_spacing, standard_slice_to_ras, world_matrix)
from .protocol import (BoxPrompt, PointPrompt, PromptError, ScribblePrompt, build_infer_params,  # noqa: F401
                       ijk_dims, label_outside_slice, masks_from_label, numpy_axis, read_slice, slice_replacement,
                       write_slice)
from .jobs import BackgroundJob, Busy, JobCancelled, JobRunner  # noqa: F401
from .history import ChatHistory, ChatTurn, UndoEntry, UndoStack  # noqa: F401

__all__ = [name for name, value in list(globals().items())
           if not name.startswith("_") and not isinstance(value, type(errors))]
