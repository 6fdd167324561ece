"""The atlas prior: the CAT12 template registered (affine) onto a subject's head, carrying the vocabulary's
atlases with it, so that a named structure gets a mask and a point gets a name on a brain the model never saw.

Multi-atlas label fusion by majority vote: a voxel belongs to a structure when at least half of the atlases that
define that structure (its `sources` in the vocabulary table) say so. Naming a voxel picks the structure with the
most atlas votes there among those with a majority, preferring one side to "both" and a named structure to a
whole-tissue class.

The atlases are not project dependencies (several are non-commercial; sample_data/README.md): `AtlasPrior.load`
raises `AtlasDataMissing` with the install command when they are absent, and the server then answers with the
model alone. Measured on the held-out subject in docs/atlas_prior.md.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from medplib.data.atlas_brains import atlas_label, cat12_atlases, cat12_template
from medplib.data.vocabulary import Structure, Vocabulary, vocabulary
from medplib.imaging.registration import affine_register, sitk_from_ras, spans_mm, warp_label

MIN_SPAN_MM = 100.0  # a whole brain spans 120-170 mm per axis; less is a partial field of view
MIN_SLICES = 16
MAX_METRIC = -0.5  # Mattes MI above this: the template did not find a brain (partial EPI slabs score -0.57)
# Cerebral-cortex parcels: thin grey-matter ribbons that an affine registration cannot lay exactly on the
# subject's folds, so their mask is kept to the subject's own grey matter (`grey_matter`).
CORTICAL = re.compile(r"\b(gyrus|cortex|lobule|pole|cuneus|precuneus|insula|operculum|planum|supplementary motor "
                      r"area)\b")
NOT_CORTICAL = ("cerebellar cortex", "cerebral cortex")
# Whole-tissue classes answer "what is this?" only where no named structure has a majority.
COARSE_BASES = ("brain", "cerebral cortex", "cerebral white matter", "cerebellum", "cerebrospinal fluid")


def is_cortical(s: Structure) -> bool:
    """A parcel of the cerebral cortex (a gyrus, lobule, pole, the insula...), by its anatomical name."""
    return bool(CORTICAL.search(s.base)) and s.base not in NOT_CORTICAL


def grey_matter(image: np.ndarray, brain: np.ndarray, iterations: int = 30) -> np.ndarray:
    """The subject's grey matter inside `brain`: the middle of three intensity classes (1D k-means), grown by
    one voxel for partial volume. The middle class is grey matter on T1 (CSF < GM < WM) and T2 (WM < GM < CSF)
    alike; not on FLAIR, where white matter is the middle class."""
    from scipy import ndimage

    values = image[brain].astype(np.float32)
    if values.size < 3:
        return np.zeros(image.shape, bool)
    centres = np.percentile(values, [15.0, 50.0, 85.0]).astype(np.float32)
    for _ in range(iterations):  # Lloyd's iterations on a sample: the classes settle in a few steps
        sample = values[:: max(1, values.size // 200_000)]
        nearest = np.abs(sample[:, None] - centres[None]).argmin(axis=1)
        new = np.array([sample[nearest == c].mean() if (nearest == c).any() else centres[c] for c in range(3)])
        if np.allclose(new, centres):
            break
        centres = new.astype(np.float32)
    order = np.argsort(centres)
    middle = np.abs(values[:, None] - centres[None]).argmin(axis=1) == order[1]
    grey = np.zeros(image.shape, bool)
    grey[brain] = middle
    return ndimage.binary_dilation(grey, iterations=1) & brain


class PriorUnavailable(ValueError):
    """The volume cannot take the atlas prior (2D, partial field of view, or no brain found); says why."""


@dataclass
class SubjectPrior:
    """The vocabulary's atlases on one subject's voxel grid (IJK), after registration."""

    labels: dict[str, np.ndarray]  # atlas key -> label on the subject grid
    vocab: Vocabulary
    grey: np.ndarray | None  # the subject's own grey matter (`grey_matter`), None: cortical parcels not restricted
    metric: float
    seconds: float
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def atlases_for(self, s: Structure) -> list[str]:
        return [a for a in self.labels if s.sources.get(a)]

    def covers(self, s: Structure | None) -> bool:
        return s is not None and (s.name == "brain" or bool(self.atlases_for(s)))

    def votes(self, s: Structure) -> np.ndarray:
        """Fraction (0..1) of the atlases defining `s` that put each voxel inside it."""
        atlases = self.atlases_for(s)
        if not atlases:
            raise KeyError(f"no installed atlas defines {s.name!r}")
        total = sum(np.isin(self.labels[a], s.sources[a]).astype(np.float32) for a in atlases)
        return total / len(atlases)

    def mask(self, s: Structure | str) -> np.ndarray:
        """The fused 3D mask of a structure (or "brain": most atlases non-zero) on the subject grid; a cortical
        parcel only on the subject's grey matter."""
        name = s if isinstance(s, str) else s.name
        if name not in self._cache:
            if name == "brain":
                fused = sum((lab > 0).astype(np.float32) for lab in self.labels.values()) / len(self.labels) >= 0.5
            else:
                structure = self.vocab.by_name[name]
                fused = self.votes(structure) >= 0.5
                if self.grey is not None and is_cortical(structure):
                    fused &= self.grey
            self._cache[name] = fused
            while len(self._cache) > 8:  # the few structures asked in a row (slice after slice) stay
                self._cache.pop(next(iter(self._cache)))
        return self._cache[name]

    def name_at(self, ijk: Sequence[int]) -> Structure | None:
        """The structure at one voxel, or None outside every atlas.

        Among structures a majority of their atlases put here: named structures before coarse tissue classes,
        one side before both sides, then the most atlas votes (the most widely agreed name: "thalamus" rather than
        a nucleus only one atlas draws), then the smallest."""
        where = tuple(int(v) for v in ijk)
        values = {a: int(lab[where]) for a, lab in self.labels.items()}
        scored = []
        for s in self.vocab.structures:
            atlases = [a for a in values if s.sources.get(a)]
            n = sum(values[a] in s.sources[a] for a in atlases)
            if n:
                scored.append((s, n, n / len(atlases)))
        if not scored:
            return None
        majority = [x for x in scored if x[2] >= 0.5] or scored

        def rank(x):
            s, n, frac = x
            return (s.base not in COARSE_BASES, s.side != "both", n, frac, -sum(len(v) for v in s.sources.values()))

        return max(majority, key=rank)[0]


class AtlasPrior:
    """The template (1.5 mm) and its atlas labels, loaded once; `register` maps them onto a subject."""

    def __init__(self, template, labels: dict[str, np.ndarray], vocab: Vocabulary | None = None):
        from scipy import ndimage

        self.vocab = vocab or vocabulary()
        self.atlases = sorted(labels)
        self._template = sitk_from_ras(template.data.astype(np.float32), template.affine)
        # The brain and a rim around it: the dark border the subject's skull or CSF gives, not the skull itself.
        rim = ndimage.binary_dilation(template.mask, iterations=4).astype(np.uint8)
        self._mask = sitk_from_ras(rim, template.affine)
        # uint8 (every CAT12 atlas value is < 256): the warped labels take one byte per voxel and atlas.
        self._labels = {a: sitk_from_ras(lab.astype(np.uint8), template.affine) for a, lab in labels.items()}
        self.info = dict(template.info)

    @classmethod
    def load(cls, atlases: Iterable[str] | None = None, vocab: Vocabulary | None = None) -> "AtlasPrior":
        """The CAT12 template with the vocabulary's atlases (from the installed deepmriprep wheel)."""
        vocab = vocab or vocabulary()
        template = cat12_template()
        keys = list(atlases) if atlases is not None else cat12_atlases(vocab)
        return cls(template, {a: atlas_label(a, template) for a in keys}, vocab)

    def check(self, image: sitk.Image) -> None:
        """Raise PriorUnavailable when the volume is not a whole 3D head or brain."""
        size, span = np.asarray(image.GetSize()), spans_mm(image)
        if image.GetDimension() != 3 or size.min() < MIN_SLICES:
            raise PriorUnavailable(f"the atlas prior needs a 3D volume with at least {MIN_SLICES} slices on every "
                                   f"axis (got {tuple(int(s) for s in size)})")
        if span.min() < MIN_SPAN_MM:
            raise PriorUnavailable(f"the atlas prior needs a whole brain in the field of view (at least "
                                   f"{MIN_SPAN_MM:.0f} mm on every axis, got {tuple(round(float(s)) for s in span)})")

    def register(self, image: sitk.Image, restrict_cortex: bool = True) -> SubjectPrior:
        """Register the template onto `image` and warp every atlas onto its grid (about 5 s on two cores);
        `restrict_cortex`: keep cortical parcels to the subject's grey matter."""
        self.check(image)
        t0 = time.perf_counter()
        reg = affine_register(image, self._template, self._mask)
        if reg.metric > MAX_METRIC:
            raise PriorUnavailable(f"the template found no brain in this volume (match {reg.metric:.2f}, needs "
                                   f"<= {MAX_METRIC}); is it a head MRI?")
        labels = {a: warp_label(lab, image, reg.transform) for a, lab in self._labels.items()}
        prior = SubjectPrior(labels, self.vocab, None, reg.metric, 0.0)
        if restrict_cortex:
            prior.grey = grey_matter(sitk.GetArrayFromImage(image).transpose(2, 1, 0), prior.mask("brain"))
        prior.seconds = time.perf_counter() - t0
        return prior
