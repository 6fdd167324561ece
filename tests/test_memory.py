"""Memory arithmetic for the official model, checked against the figures in the reference notes."""

import pytest

from medplib.checkpoints.memory import report
from medplib.model.config import preset


def test_official_memory_matches_published_estimates():
    r = report(preset("official"))
    assert r["parameters_billion"] == pytest.approx(11.7, abs=0.15)  # ~11.7 B total
    assert r["active_parameters_billion"] == pytest.approx(6.74, abs=0.1)  # one expert per token + attention
    assert r["weights_gib"] == pytest.approx(21.8, abs=0.4)  # ~22 GiB in bf16
    assert r["kv_cache_mib_per_token"] == pytest.approx(0.5, abs=1e-6)  # 32 layers x 2 x 4096 x 2 bytes
