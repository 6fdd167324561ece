"""MedPLIB: a pixel-level biomedical multimodal LLM (CLIP + MoE LLM + SAM mask branch).

The names users need, importable from the top (`from medplib import build_model, MedPLIBPredictor`), are loaded on
first use so that `import medplib.model.config` stays light. Subpackages, lowest layer first (a layer imports only
from layers above it in this list):

    imaging      windows, resizing, region prompts, text boxes, mask metrics
    model        the network: config, modeling, MoE, SAM / LiteMedSAM, tokenizer, conversation, LoRA, loss
    checkpoints  build_model, project save / load / delta, FSDP shards, the official release
    data         volumes, planes, datastore conversations
    inference    predictor, batched decoding / grounding, promptable segmentation, propagation
    training     samples, stages, the training loop, runs over a datastore, the default-model recipe
    evaluation   MeCoVQA and held-out evaluation (`python -m medplib.evaluation`)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MedPLIBConfig": "medplib.model.config",
    "preset": "medplib.model.config",
    "MedPLIBForCausalLM": "medplib.model.modeling",
    "build_model": "medplib.checkpoints.build",
    "from_pretrained": "medplib.checkpoints.project",
    "save_pretrained": "medplib.checkpoints.project",
    "load_official": "medplib.checkpoints.official",
    "MedPLIBPredictor": "medplib.inference.predictor",
    "Answer": "medplib.inference.predictor",
    "PromptablePredictor": "medplib.inference.promptable",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medplib' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
