"""Optional `torch.compile` of the serving hot paths (`--conf compile llm|all`).

Compiled in place with dynamic shapes, so prompts of any length and any batch size re-use one graph family.
On a GPU this removes most per-layer launch overhead of decoding; on a CPU the gain is small and the first
requests pay the compilation, hence it is off by default.
"""

from __future__ import annotations

from medplib.model.modeling import MedPLIBForCausalLM

PARTS = ("none", "llm", "all")


def compile_model(model: MedPLIBForCausalLM, parts: str = "llm") -> list[str]:
    """Compile the LLM decoder layers (`llm`), plus the vision towers and the mask decoder (`all`).

    Returns the names of the modules compiled."""
    if parts not in PARTS:
        raise ValueError(f"compile must be one of {', '.join(PARTS)}, got {parts!r}")
    if parts == "none":
        return []
    done = []
    for i, layer in enumerate(model.model.layers):
        layer.compile(dynamic=True)
        done.append(f"model.layers.{i}")
    if parts == "all":
        modules = {"model.vision_tower": model.model.vision_tower,
                   "model.visual_model.image_encoder": model.model.visual_model.image_encoder,
                   "model.visual_model.mask_decoder": model.model.visual_model.mask_decoder}
        for name, module in modules.items():
            module.compile(dynamic=True)
            done.append(name)
    return done
