"""Each benchmark metric on inputs with known answers."""
from __future__ import annotations

import math

import pytest
import torch

from speechtok.benchmarks import metrics as M

SR = 16000


def speechlike(seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Amplitude-modulated harmonics + a little noise: enough structure for STOI/PESQ."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    f0 = 140 + 30 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SR
    x = sum(torch.sin(h * phase) / h for h in range(1, 12))
    env = (0.5 + 0.5 * torch.sin(2 * math.pi * 3.0 * t)).clamp_min(0) ** 2
    return (0.2 * env * x + 0.002 * torch.randn(t.shape, generator=g)).float()


def orthogonal_noise(x: torch.Tensor, snr_db: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = x.double() - x.double().mean()
    n = torch.randn(x.shape, generator=g, dtype=torch.float64)
    n = n - n.mean()
    n = n - (n @ x) / (x @ x) * x
    return n * torch.sqrt((x @ x) / (n @ n) / 10 ** (snr_db / 10))


def test_si_sdr_known_values():
    x = speechlike()
    assert M.si_sdr(x, x) > 100
    assert M.si_sdr(x, 0.3 * x) > 80  # scale-invariant (float32 rounding only)
    for snr in (0.0, 10.0, 25.0):
        y = (x.double() - x.double().mean()) + orthogonal_noise(x, snr)
        assert M.si_sdr(x, y) == pytest.approx(snr, abs=1e-3)
    assert M.si_sdr(x, -x) > 80  # -x is a scaled copy (alpha = -1)


def test_spectral_distances_zero_on_identity_and_grow_with_noise():
    x = speechlike()
    assert M.mel_distance(x, x, SR) == 0.0 and M.stft_distance(x, x) == 0.0
    d = [M.mel_distance(x, (x + orthogonal_noise(x, s)).float(), SR) for s in (30.0, 10.0, 0.0)]
    assert d[0] < d[1] < d[2]
    s = [M.stft_distance(x, (x + orthogonal_noise(x, snr)).float()) for snr in (30.0, 10.0, 0.0)]
    assert s[0] < s[1] < s[2]
    # silence against silence: both clamp to 1e-5, distance 0; silence against a signal: large
    z = torch.zeros(SR)
    assert M.mel_distance(z, z, SR) == 0.0
    assert M.mel_distance(x, torch.zeros_like(x), SR) > 1.0
    # spectral convergence of silence against x is exactly 1 at every scale
    only_sc = M.stft_distance(x, torch.zeros_like(x)) - sum(
        float((M._mag(x.double(), w, w // 4).clamp_min(1e-5).log10() + 5).abs().mean())
        for w in (2048, 1024, 512, 256, 128)) / 5
    assert only_sc == pytest.approx(1.0, abs=1e-6)


def test_stoi_and_pesq_bounds():
    pytest.importorskip("pystoi")
    pytest.importorskip("pesq")
    x = speechlike(3.0)
    assert M.stoi(x, x, SR) == pytest.approx(1.0, abs=1e-6)
    noisy = (x + orthogonal_noise(x, -5.0)).float()
    assert M.stoi(x, noisy, SR) < 0.9
    assert M.pesq_wb(x, x, SR) == pytest.approx(4.64, abs=0.01)
    assert M.pesq_wb(x, noisy, SR) < 2.0
    with pytest.raises(ValueError, match="too short for STOI"):
        M.stoi(x[:2000], x[:2000], SR)


def test_error_rates_known_values():
    assert M.word_errors("a b c d", "a x c").rate == pytest.approx(2 / 4)
    assert M.word_errors("Seven.", "7").rate == 0.0  # normalization: digits, case, punctuation
    assert M.char_errors("abcd", "abd").rate == pytest.approx(1 / 4)
    assert M.corpus_rate([M.word_errors("a b", "a b"), M.word_errors("c d", "")]) == pytest.approx(2 / 4)
    assert M.word_errors("", "").rate == 0.0 and math.isinf(M.word_errors("", "x").rate)
    jiwer = pytest.importorskip("jiwer")
    g = torch.Generator().manual_seed(0)
    words = "the cat sat on a mat by door".split()
    for _ in range(20):
        ref = " ".join(words[int(i)] for i in torch.randint(0, 8, (7,), generator=g))
        hyp = " ".join(words[int(i)] for i in torch.randint(0, 8, (int(torch.randint(1, 9, (1,), generator=g)),),
                                                             generator=g))
        assert M.word_errors(ref, hyp).rate == pytest.approx(jiwer.wer(ref, hyp))


def test_codebook_usage_known_values():
    codes = torch.tensor([[0, 1, 2, 3] * 4, [5] * 16])
    u = M.codebook_usage(codes, [4, 8])
    assert u.used == (1.0, 1 / 8)
    assert u.entropy_bits == pytest.approx((2.0, 0.0))
    assert u.perplexity == pytest.approx((4.0, 1.0))
    assert M.entropy_bitrate(codes, [4, 8], seconds=2.0) == pytest.approx(2.0 * 16 / 2.0)
    with pytest.raises(ValueError, match=r"\[K=3, N\]"):
        M.codebook_usage(codes, [4, 8, 2])
