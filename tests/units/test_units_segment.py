"""Syllable segmenters: exact recovery on piecewise-constant features, target rate, pooling."""
from __future__ import annotations

import pytest
import torch

from speechtok.units.features.base import FeatureError
from speechtok.units.segment import (SegmenterConfig, greedy_segment, mincut_segment, num_segments,
                                     pool_segments, segment)


def piecewise(lens, dim=16, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(len(lens), dim, generator=g)
    f = torch.cat([p.repeat(n, 1) for p, n in zip(protos, lens)])
    return f + noise * torch.randn(f.shape, generator=g), protos


@pytest.mark.parametrize("fn", [mincut_segment, greedy_segment])
def test_recovers_true_boundaries(fn):
    lens = [7, 12, 5, 9, 15, 6, 3, 11]
    f, _ = piecewise(lens)
    b = fn(f, len(lens))
    assert b.tolist() == torch.cumsum(torch.tensor([0] + lens), 0).tolist()


@pytest.mark.parametrize("method", ["mincut", "greedy"])
@pytest.mark.parametrize("rate", [4.0, 5.0, 6.0])
def test_target_rate(method, rate):
    frame_rate = 50.0
    f = torch.randn(423, 8, generator=torch.Generator().manual_seed(1))  # 8.46 s
    b = segment(f, frame_rate, SegmenterConfig(method, rate))
    n = len(b) - 1
    assert n == round(423 / frame_rate * rate)
    assert abs(n / (423 / frame_rate) - rate) < 0.1
    assert b[0] == 0 and b[-1] == 423 and (b[1:] > b[:-1]).all()


def test_num_segments_edges():
    assert num_segments(0, 50.0, 5.0) == 0
    assert num_segments(3, 50.0, 5.0) == 1  # at least one segment
    assert num_segments(10, 50.0, 1000.0) == 10  # at most one per frame
    assert segment(torch.zeros(0, 4), 50.0, SegmenterConfig()).tolist() == [0]
    with pytest.raises(FeatureError, match="method"):
        SegmenterConfig("nope")


def test_pool_is_segment_mean():
    f, protos = piecewise([4, 6, 5], noise=0.0)
    b = torch.tensor([0, 4, 10, 15])
    torch.testing.assert_close(pool_segments(f, b), protos)
    x = torch.arange(12.0).reshape(6, 2)
    assert pool_segments(x, torch.tensor([0, 1, 6])).tolist() == [[0.0, 1.0], [6.0, 7.0]]


def test_custom_segmenter_plugs_in_and_is_checked():
    from speechtok.units import segment as seg_mod

    seg_mod.register_segmenter("uniform", lambda f, n: torch.linspace(0, f.shape[0], n + 1).round().long())
    seg_mod.register_segmenter("broken", lambda f, n: torch.tensor([0, f.shape[0]]))
    try:
        f = torch.randn(100, 4)
        assert segment(f, 50.0, SegmenterConfig("uniform", 5.0)).tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
        with pytest.raises(FeatureError, match="broken"):
            segment(f, 50.0, SegmenterConfig("broken", 5.0))
    finally:
        seg_mod.SEGMENTERS.pop("uniform")
        seg_mod.SEGMENTERS.pop("broken")
