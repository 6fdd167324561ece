"""Volume <-> 2D plane mapping: the slice is shown to the model as a radiologist sees it in that view.

Conventions (Slicer's default views, written in LPS, the frame SimpleITK directions use):
  axial    (normal S/I): columns run toward patient left (+L), rows toward posterior (+P);
  coronal  (normal A/P): columns toward patient left (+L), rows toward inferior (-S);
  sagittal (normal R/L): columns toward posterior (+P), rows toward inferior (-S).
Anisotropic in-plane pixels are resampled up to the finer spacing (never down), so every original pixel keeps at
least one model pixel and points map back to exactly the voxel they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# (row world axis, row sign, col world axis, col sign) in LPS, keyed by the world axis of the slice normal.
_VIEW_AXES = {2: (1, +1, 0, +1), 1: (2, -1, 0, +1), 0: (2, -1, 1, +1)}
VIEW_NAMES = {2: "axial", 1: "coronal", 0: "sagittal"}


@dataclass(frozen=True)
class PlaneMapper:
    """Maps one slice of a volume (IJK array indexing) to an oriented, isotropic 2D plane and back."""

    shape: tuple[int, int, int]  # volume shape in IJK order
    axis: int  # IJK axis held fixed
    index: int  # slice index along `axis`
    row_axis: int  # IJK axis that runs down the plane's rows
    col_axis: int
    flip_rows: bool
    flip_cols: bool
    row_scale: float  # model pixels per voxel along rows (>= 1)
    col_scale: float
    view: str

    @classmethod
    def create(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float], direction: np.ndarray,
               axis: int, index: int) -> "PlaneMapper":
        """`direction`: 3x3 matrix whose column a is voxel axis a's direction in LPS (SimpleITK's GetDirection)."""
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        if not 0 <= index < shape[axis]:
            raise ValueError(f"slice {index} is outside 0..{shape[axis] - 1} along axis {axis}")
        d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        in_plane = [a for a in (0, 1, 2) if a != axis]
        normal_world = int(np.argmax(np.abs(d[:, axis])))
        row_world, row_sign, col_world, col_sign = _VIEW_AXES[normal_world]
        # The in-plane voxel axis closest to the desired screen-column direction becomes the column axis.
        col_axis = max(in_plane, key=lambda a: abs(d[col_world, a]))
        row_axis = in_plane[0] if in_plane[1] == col_axis else in_plane[1]
        flip_cols = np.sign(d[col_world, col_axis]) != col_sign
        flip_rows = np.sign(d[row_world, row_axis]) != row_sign
        sr, sc = float(spacing[row_axis]), float(spacing[col_axis])
        finest = min(sr, sc)
        row_scale = sr / finest if abs(sr / finest - 1.0) > 1e-3 else 1.0
        col_scale = sc / finest if abs(sc / finest - 1.0) > 1e-3 else 1.0
        return cls(tuple(int(s) for s in shape), axis, int(index), row_axis, col_axis, bool(flip_rows),
                   bool(flip_cols), row_scale, col_scale, VIEW_NAMES[normal_world])

    # ------------------------------------------------------------------ sizes
    @property
    def plane_shape(self) -> tuple[int, int]:
        """(rows, cols) of the oriented plane at the original voxel grid."""
        return self.shape[self.row_axis], self.shape[self.col_axis]

    @property
    def model_shape(self) -> tuple[int, int]:
        """(rows, cols) of the isotropic plane the model sees."""
        r, c = self.plane_shape
        return int(round(r * self.row_scale)), int(round(c * self.col_scale))

    # ------------------------------------------------------------------ image
    def extract(self, volume: np.ndarray) -> np.ndarray:
        """The slice as the model sees it: oriented and resampled to isotropic pixels (bilinear), float32."""
        plane = self._orient(np.take(volume, self.index, axis=self.axis)).astype(np.float32)
        if self.model_shape == self.plane_shape:
            return plane
        t = torch.from_numpy(np.ascontiguousarray(plane))[None, None]
        return F.interpolate(t, self.model_shape, mode="bilinear", align_corners=False)[0, 0].numpy()

    def extract_labels(self, volume: np.ndarray) -> np.ndarray:
        """Integer labels on the model plane by nearest neighbour (pixel centres), the inverse of `paste`."""
        return self.slice_labels_to_plane(np.take(volume, self.index, axis=self.axis))

    def slice_view(self, volume: np.ndarray) -> np.ndarray:
        """This slice of an IJK volume as a writable view (the two other axes in IJK order)."""
        index = [slice(None)] * 3
        index[self.axis] = self.index
        return volume[tuple(index)]

    def slice_labels_to_plane(self, labels: np.ndarray) -> np.ndarray:
        """Integer labels of this slice (as `slice_view` holds them) on the model plane, nearest neighbour."""
        plane = self._orient(labels)
        if self.model_shape == self.plane_shape:
            return np.ascontiguousarray(plane)
        rows = np.minimum(((np.arange(self.model_shape[0]) + 0.5) / self.row_scale).astype(int),
                          self.plane_shape[0] - 1)
        cols = np.minimum(((np.arange(self.model_shape[1]) + 0.5) / self.col_scale).astype(int),
                          self.plane_shape[1] - 1)
        return np.ascontiguousarray(plane[np.ix_(rows, cols)])

    def _orient(self, plane: np.ndarray) -> np.ndarray:
        """np.take leaves the two in-plane axes in increasing IJK order; put rows first, then flip."""
        in_plane = [a for a in (0, 1, 2) if a != self.axis]
        if in_plane[0] != self.row_axis:
            plane = plane.T
        if self.flip_rows:
            plane = plane[::-1]
        if self.flip_cols:
            plane = plane[:, ::-1]
        return plane

    def _unorient(self, plane: np.ndarray) -> np.ndarray:
        if self.flip_cols:
            plane = plane[:, ::-1]
        if self.flip_rows:
            plane = plane[::-1]
        in_plane = [a for a in (0, 1, 2) if a != self.axis]
        if in_plane[0] != self.row_axis:
            plane = plane.T
        return plane

    # ------------------------------------------------------------------ points
    def on_slice(self, ijk) -> bool:
        return int(round(ijk[self.axis])) == self.index

    def to_plane(self, ijk) -> tuple[float, float]:
        """IJK voxel -> (row, col) of the model pixel containing its centre."""
        r = float(ijk[self.row_axis])
        c = float(ijk[self.col_axis])
        n_rows, n_cols = self.plane_shape
        if self.flip_rows:
            r = n_rows - 1 - r
        if self.flip_cols:
            c = n_cols - 1 - c
        # The model pixel that contains the voxel centre (an integer, so rounding downstream is exact).
        return float(np.floor((r + 0.5) * self.row_scale)), float(np.floor((c + 0.5) * self.col_scale))

    def to_voxel(self, row: float, col: float) -> tuple[int, int, int]:
        """Model pixel (row, col) -> the IJK voxel that contains it."""
        n_rows, n_cols = self.plane_shape
        r = min(int(np.floor((row + 0.5) / self.row_scale)), n_rows - 1)
        c = min(int(np.floor((col + 0.5) / self.col_scale)), n_cols - 1)
        if self.flip_rows:
            r = n_rows - 1 - r
        if self.flip_cols:
            c = n_cols - 1 - c
        ijk = [0, 0, 0]
        ijk[self.axis], ijk[self.row_axis], ijk[self.col_axis] = self.index, r, c
        return tuple(ijk)

    # ------------------------------------------------------------------ masks
    def plane_to_slice(self, plane: np.ndarray, logits: bool = False) -> np.ndarray:
        """A model-plane array -> the 2D array of the volume slice in np.take order.

        Binary masks are resampled by nearest neighbour at pixel centres (exact inverse of `to_plane`); logits
        bilinearly (then threshold them).
        """
        arr = np.asarray(plane)
        if arr.shape != self.model_shape:
            raise ValueError(f"plane shape {arr.shape} != model plane shape {self.model_shape}")
        if self.model_shape != self.plane_shape:
            if logits:
                t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
                arr = F.interpolate(t, self.plane_shape, mode="bilinear", align_corners=False)[0, 0].numpy()
            else:
                rows = np.minimum(((np.arange(self.plane_shape[0]) + 0.5) * self.row_scale).astype(int),
                                  self.model_shape[0] - 1)
                cols = np.minimum(((np.arange(self.plane_shape[1]) + 0.5) * self.col_scale).astype(int),
                                  self.model_shape[1] - 1)
                arr = arr[np.ix_(rows, cols)]
        return np.ascontiguousarray(self._unorient(arr))

    def paste(self, volume_label: np.ndarray, plane: np.ndarray, value: int = 1) -> None:
        """Write a binary model-plane mask into `volume_label` (IJK) at this slice, with label `value`."""
        self.slice_view(volume_label)[self.plane_to_slice(plane > 0)] = value
