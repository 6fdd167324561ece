"""Answering and segmenting: the cached predictor, batched decoding and grounding, promptable SAM, propagation."""
