"""Where the atlas prior answers a slice request (docs/atlas_prior.md): a grounding question that names one
structure of the brain vocabulary gets the registered atlases' fused mask on the slice, and an identity question
about a point or box gets the structure the atlases put under it. The model's answer text is kept for grounding;
`mask_source` / `answer_source` and `atlas_prior` in the response say what was used and why not when it was not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medplib.data.atlas_prior import COARSE_BASES
from medplib.data.conversations import REGION_Q
from medplib.data.planes import PlaneMapper
from medplib.data.vocabulary import Structure, vocabulary
from medplib.data.volumes import Volume
from medplib.imaging.regions import Region, region_centre
from medplib.model.bilingual import REGION_QUESTIONS_ZH, is_chinese

IDENTITY_QUESTIONS = {q.replace("<region>", "").strip().lower() for q in (*REGION_Q, *REGION_QUESTIONS_ZH)}


def named_structure(segment: str | None, question: str) -> Structure | None:
    """The vocabulary structure a grounding request names: the segment name if it is one, else the question's.

    Whole tissue classes (the brain, grey / white matter, CSF) stay the model's: trained on them, it does as well
    or better (held-out head with skull, 10 slices: brain 0.911 vs the prior's 0.853; on head CT, which the
    atlases' T1 template does not fit, the model scores 0.94)."""
    vocab = vocabulary()
    found = (vocab.resolve(segment, whole=True) if segment else None) or vocab.resolve(question or "")
    return None if found is None or found.base in COARSE_BASES else found


def _prior_for(engine, image_id: str, vol: Volume, structure: Structure | None):
    """(the registered prior, None) when it can ground `structure` on this image, else (None, why not)."""
    if structure is None:
        return None, {"used": False, "unavailable": "the question names no structure of the brain vocabulary"}
    prior, why = engine.atlas.get(image_id, vol)
    if prior is None:
        return None, {"used": False, "unavailable": why}
    if not prior.covers(structure):
        return None, {"used": False, "unavailable": f"no installed atlas defines {structure.name!r}"}
    return prior, None


def ground(engine, image_id: str, vol: Volume, mapper: PlaneMapper, label: np.ndarray, value: int,
           structure: Structure | None) -> dict[str, Any]:
    """Replace mask `value` on the slice with the prior's mask of `structure` when it can; what happened."""
    prior, why_not = _prior_for(engine, image_id, vol, structure)
    if prior is None:
        return why_not
    view = mapper.slice_view(label)
    view[view == value] = 0
    view[mapper.slice_view(prior.mask(structure))] = value
    return {"used": True, **_describe(prior, structure)}


def volume_mask(engine, image_id: str, vol: Volume, segment: str | None,
                question: str) -> tuple[np.ndarray | None, dict[str, Any]]:
    """(the prior's 3D mask or None, what happened) for a volume-scope grounding request: every slice at once,
    where the model would be asked slice by slice."""
    structure = named_structure(segment, question)
    prior, why_not = _prior_for(engine, image_id, vol, structure)
    if prior is None:
        return None, why_not
    return prior.mask(structure).astype(np.uint8), {"used": True, **_describe(prior, structure)}


def grounded_answer(info: dict[str, Any], question: str) -> str:
    """The answer of a volume-scope request the prior grounded (no model turn was run)."""
    if is_chinese(question):
        return f"好的，这是{info['zh']}（配准图谱）。"
    return f"Here is the {info['structure']} (registered atlases)."


def name_region(engine, image_id: str, vol: Volume, mapper: PlaneMapper, regions: list[Region],
                question: str) -> tuple[str | None, dict[str, Any]]:
    """(answer text or None, what happened): the structure under the first region prompt, for identity
    questions ("What is this structure?"); other questions keep the model's answer and get `structure` only."""
    if not regions:
        return None, {"used": False, "unavailable": "no region prompt"}
    prior, why = engine.atlas.get(image_id, vol)
    if prior is None:
        return None, {"used": False, "unavailable": why}
    row, col = region_centre(regions[0], mapper.model_shape)
    s = prior.name_at(mapper.to_voxel(row, col))
    if s is None:
        return None, {"used": False, "unavailable": "no atlas labels this point (outside the brain)"}
    info = _describe(prior, s)
    if _strip(question) not in IDENTITY_QUESTIONS:
        return None, {"used": False, "structure": s.name, "zh": s.zh,
                      "unavailable": "not an identity question: the model answers, the atlases' structure is "
                                     "given alongside"}
    text = f"这是{s.zh}。" if is_chinese(question) else f"This is the {s.name}."
    return text, {"used": True, **info}


def _describe(prior, s: Structure) -> dict[str, Any]:
    return {"structure": s.name, "zh": s.zh, "atlases": prior.atlases_for(s),
            "registration_match": round(prior.metric, 3), "registration_ms": round(prior.seconds * 1e3, 1)}


def _strip(question: str) -> str:
    return (question or "").replace("<region>", "").strip().lower()
