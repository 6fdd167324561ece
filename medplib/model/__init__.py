"""The network: config, MedPLIB (CLIP + MoE LLM + SAM mask branch), its tokens and prompts, LoRA, the loss."""
