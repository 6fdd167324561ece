"""MedPLIBLabelLib: pure-Python helpers for the MedPLIB Label Slicer module.

Imports only the standard library and numpy (never slicer, qt, ctk, vtk), so it runs and is tested outside
Slicer. Public API (names kept stable for ``MedPLIBLabel.py`` and the ``MedPLIBLabelSlicer`` package):

* errors:   ClientError (``.user_message``), ConnectionRefused, BadURL, Unauthorized, NotFound, BadRequest
            (``.field``), ServerError, Timeout, VersionMismatch
* client:   MedPLIBClient, normalize_url
* results:  ServerInfo (``status_line``), ModelInfo, InferResult (``has_masks``)
* geometry: ObliqueSliceError, SliceOutsideVolumeError, ijk_to_ras, ras_to_ijk, slice_axis_from_normal,
            slice_index, slice_spacing, point_on_view, points_to_ijk, roi_to_ijk, roi_corners_world,
            scribble_to_ijk, standard_slice_to_ras, world_matrix
* protocol: PointPrompt, BoxPrompt (``from_roi``), ScribblePrompt, PromptError, build_infer_params,
            slice_replacement, read_slice, write_slice, masks_from_label, label_outside_slice, numpy_axis, ijk_dims
* prompts:  VIEW_NAMES, collect_prompts, prompt_points, choose_view, view_order, roi_is_defined, stroke_prompt,
            prompt_counts, prompt_summary
* labels:   SEGMENT_COLORS, segment_color, label_values, segments_to_label
* ui_state: DEFAULT_URL, CLIENT_TIMEOUT_S, SLICE_TIMEOUT_S, VOLUME_TIMEOUT_S, safe_image_id, new_image_id,
            is_safe_id, training_status_text, training_running, user_message, button_states, image_id_text,
            url_choices, url_history_after_connect, sort_model_names, pick_trainer, shown_question, reload_order
* tasks:    fetch_sample, upload_file, submit_label, remove_file, upload_volume_array, submit_label_array,
            infer_with_region, discard_result, make_temp_dir, remove_temp_dir (worker-thread functions)
* jobs:     BackgroundJob, JobRunner, JobCancelled, Busy, POLL_MS, POLL_YIELD_S
* history:  ChatTurn, ChatHistory, UndoEntry, UndoStack
* refer:    RoiSpec, rois_from_boxes, roi_corners, history_params, MAX_HISTORY_TURNS, BOX_ATTR, stale_box_nodes
* volume_io: write_nrrd, region_volume, check_label_geometry, LabelGeometryError
* regions:  LassoPrompt (protocol), RegionMask, lasso_region, polygon_mask, internal_offset, write_plane_inplace,
            restore_plane_inplace, read_plane_inplace
* interaction: SHORTCUTS, shortcut_help, SETTINGS_DEFAULTS, settings_value, run_on_placement, TARGET_MODES,
            SegmentTarget, segment_targets, available_modes, next_segment_index
* promptable: PROMPTABLE_MODES, mode_model, promptable_segment_name, build_promptable_params, Coverage,
            parse_coverage, promptable_status, InteractionSession, covered_planes (LiteMedSAM models, no question)

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
from .results import InferResult, ModelInfo, ServerInfo, clean_label_names  # noqa: F401
from .client import MedPLIBClient, normalize_url  # noqa: F401
from .geometry import (ObliqueSliceError, SliceOutsideVolumeError, ijk_to_ras, point_on_view,  # noqa: F401
                       points_to_ijk, ras_to_ijk, roi_corners_world, roi_to_ijk, scribble_to_ijk,
                       slice_axis_from_normal, slice_index, slice_spacing, standard_slice_to_ras, world_matrix)
from .protocol import (BoxPrompt, LassoPrompt, PointPrompt, PromptError, ScribblePrompt,  # noqa: F401
                       build_infer_params,
                       ijk_dims, label_outside_slice, masks_from_label, numpy_axis, read_slice, slice_replacement,
                       write_slice)
from .jobs import POLL_MS, POLL_YIELD_S, BackgroundJob, Busy, JobCancelled, JobRunner  # noqa: F401
from .history import ChatHistory, ChatTurn, UndoEntry, UndoStack  # noqa: F401
from .refer import (BOX_ATTR, MAX_HISTORY_TURNS, RoiSpec, history_params, roi_corners,  # noqa: F401
                    rois_from_boxes, stale_box_nodes)
from .volume_io import LabelGeometryError, check_label_geometry, region_volume, write_nrrd  # noqa: F401
from .regions import (RegionMask, internal_offset, lasso_region, polygon_mask,  # noqa: F401
                      read_plane_inplace, restore_plane_inplace, write_plane_inplace)
from .promptable import (PROMPTABLE_MODES, Coverage, InteractionSession, build_promptable_params,  # noqa: F401
                         covered_planes, mode_model, parse_coverage, promptable_segment_name, promptable_status)
from .interaction import (SETTINGS_DEFAULTS, SHORTCUTS, TARGET_MODES, SegmentTarget,  # noqa: F401
                          available_modes, next_segment_index, run_on_placement, segment_targets, settings_value,
                          shortcut_help)
from .prompts import (VIEW_NAMES, choose_view, collect_prompts, prompt_counts, prompt_points,  # noqa: F401
                      prompt_summary, roi_is_defined, stroke_prompt, view_order)
from .labels import SEGMENT_COLORS, label_values, pick_segment_color, segment_color, segments_to_label  # noqa: F401
from .ui_state import (CLIENT_TIMEOUT_S, DEFAULT_URL, SLICE_TIMEOUT_S, VOLUME_TIMEOUT_S,  # noqa: F401
                       button_states, image_id_text, is_safe_id, new_image_id, pick_trainer,
                       reload_order, safe_image_id, shown_question, sort_model_names, training_running,
                       training_status_text, url_choices, url_history_after_connect, user_message)
from .tasks import (discard_result, fetch_sample, infer_with_region, make_temp_dir, remove_file,  # noqa: F401
                    remove_temp_dir, submit_label, submit_label_array, upload_file, upload_volume_array)

__all__ = [name for name, value in list(globals().items())
           if not name.startswith("_") and not isinstance(value, type(errors))]
