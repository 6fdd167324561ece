"""`--conf compile`: torch.compile (inductor, here on CPU with the system C compiler) gives the eager answers."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest

from medplib.inference.compiled import compile_model
from medplib.inference.predictor import MedPLIBPredictor


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C compiler")
def test_compiled_decoder_layers_answer_as_eager(fitted_tiny):
    model, tok, img, _, _ = fitted_tiny
    compiled = copy.deepcopy(model)
    names = compile_model(compiled, "llm")
    assert len(names) == len(model.model.layers)
    answers = []
    for m in (model, compiled):
        pred = MedPLIBPredictor(m, tok)
        pred.set_image(img)
        # two prompt lengths and a decode loop: dynamic shapes must not break the compiled graphs
        answers.append([pred.ask("Please segment the liver."), pred.ask("Segment the liver and the spleen.")])
    for eager, comp in zip(*answers):
        assert comp.token_ids == eager.token_ids
        np.testing.assert_allclose(comp.mask_logits, eager.mask_logits, rtol=1e-3, atol=1e-3)


def test_unknown_compile_mode_is_refused(fitted_tiny):
    with pytest.raises(ValueError, match="compile must be one of"):
        compile_model(fitted_tiny[0], "everything")
