"""Exactness at Mimi's published shapes on real speech (slow: ~1.5 min on one thread).

Batched with padding == per item and a windowed long file == the whole file, bitwise; streamed in
random chunks == offline except where a code sits within float rounding of a tie (the documented
bound: a streamed frame may differ only from a codebook whose margin is below `NEAR_TIE` on)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from speechtok.benchmarks.exactness import run  # noqa: E402


@pytest.mark.slow
def test_mimi_size_batched_streamed_long_file():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = run(None, compositions=4, stream_files=4, seed=1)
    finally:
        torch.set_num_threads(n)
    assert r["codebooks"] == 32 and r["batched"]["codes_compared"] > 15000
    assert r["batched"]["differing_codes_per_item_path"] == 0
    assert r["long_file"]["differing_codes"] == 0 and r["long_file"]["seconds"] > 60
    s = r["streamed"]
    assert s["codes_compared"] > 5000
    assert s["first_flips_at_near_ties"] == s["differing_frames"], s
    assert s["differing_codes_aligned"] == 0
    # the margin predicts which codes move: perturbing the latent by eps flips only codes whose
    # margin is below 100 eps, and a large enough eps does flip some (the check is not vacuous)
    p = r["near_tie_rate"]["perturbation"]
    assert all(q["first_flip_margin_below_threshold_scaled"] == q["frames_changed"] for q in p), p
    assert p[-1]["frames_changed"] > 0
