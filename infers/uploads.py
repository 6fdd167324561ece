"""An uploaded `label` file (a scribble or a lasso's filled region) must lie on the image's voxel grid.

Reading it by array index alone (the shape check of `medplib.data.volumes.read_label_like`) would put a region drawn
on a resampled, flipped or shifted copy of the image into the wrong voxels. Here its spacing, direction and origin
are compared with the image's too; a mismatch is a 422 naming `label`.
"""

from __future__ import annotations

import numpy as np

from medplib.data.volumes import Volume, read_volume

# Same tolerances as the Slicer module's check of returned labels (MedPLIBLabelLib.volume_io): they absorb the
# float32 rounding of NIfTI headers and the decimal text of NRRD headers, never a real voxel offset.
TOL_AXIS = 1e-3  # relative, per direction / spacing component
TOL_VOXEL = 0.01  # origin offset, in voxels of the image


def geometry_mismatch(label: Volume, ref: Volume) -> str | None:
    """What differs between an uploaded label's grid and the image's (None when they agree)."""
    if tuple(label.shape) != tuple(ref.shape):
        return f"shape {list(label.shape)} does not match the image's {list(ref.shape)}"
    problems = []
    ls, rs = np.asarray(label.spacing, float), np.asarray(ref.spacing, float)
    if np.any(np.abs(ls - rs) > TOL_AXIS * np.maximum(np.abs(rs), 1e-12)):
        problems.append(f"spacing {np.round(ls, 4).tolist()} instead of {np.round(rs, 4).tolist()}")
    ld, rd = np.asarray(label.direction, float), np.asarray(ref.direction, float)
    if np.max(np.abs(ld - rd)) > TOL_AXIS:
        problems.append(f"direction {np.round(ld, 3).tolist()} instead of {np.round(rd, 3).tolist()}")
    # The origin offset in image voxels (along the image's own axes).
    offset = np.asarray(label.origin, float) - np.asarray(ref.origin, float)
    try:
        in_voxels = np.linalg.solve(rd * rs[None, :], offset)
    except np.linalg.LinAlgError:
        in_voxels = offset / np.maximum(rs, 1e-12)
    if np.max(np.abs(in_voxels)) > TOL_VOXEL:
        problems.append(f"origin {np.round(label.origin, 3).tolist()} instead of {np.round(ref.origin, 3).tolist()} "
                        f"({np.max(np.abs(in_voxels)):.2f} voxels away)")
    if not problems:
        return None
    return "the uploaded label is not on the image's voxel grid: " + "; ".join(problems)


def read_uploaded_label(path: str, ref: Volume) -> np.ndarray:
    """The uploaded label's voxels (IJK), after checking shape, spacing, direction and origin against ``ref``.
    Raises ValueError (the callers answer 422 naming `label`)."""
    label = read_volume(path)
    problem = geometry_mismatch(label, ref)
    if problem:
        raise ValueError(problem)
    return label.array
