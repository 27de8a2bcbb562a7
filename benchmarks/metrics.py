"""Benchmark metrics, each a small function on tensors.

Audio arguments are float ``[S]`` or ``[C, S]`` tensors (channels are averaged) at ``sample_rate``
Hz; ``reference`` is the original, ``estimate`` the resynthesis. The two are cut to the shorter
length. Distances are 0 for identical signals; SI-SDR is in dB (higher is better); STOI is in
[0, 1]; PESQ (wideband, ITU-T P.862.2) in [1.04, 4.64]; WER/CER are fractions (can exceed 1) after
Whisper's English text normaliser. Model-based metrics (speaker similarity, DNSMOS, ViSQOL, F0) are in
`quality`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

EPS = 1e-8


def _pair(reference: torch.Tensor, estimate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono float64 ``[S]`` pair cut to the shorter length."""
    r, e = reference.double(), estimate.double()
    if r.dim() == 2:
        r = r.mean(0)
    if e.dim() == 2:
        e = e.mean(0)
    if r.dim() != 1 or e.dim() != 1:
        raise ValueError(f"audio must be [S] or [C, S], got {tuple(reference.shape)} and {tuple(estimate.shape)}")
    n = min(r.numel(), e.numel())
    if n == 0:
        raise ValueError("cannot compare empty audio")
    return r[:n], e[:n]


def si_sdr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019), zero-mean signals.

    ``estimate = a * reference + noise`` with ``noise`` orthogonal to ``reference`` gives
    ``10 log10(|a reference|^2 / |noise|^2)``; identical signals give a large value (~ +160 dB).
    """
    r, e = _pair(reference, estimate)
    r, e = r - r.mean(), e - e.mean()
    alpha = (e @ r) / (r @ r + EPS)
    target = alpha * r
    noise = e - target
    return float(10 * torch.log10((target @ target + EPS) / (noise @ noise + EPS)))


def _mel_fb(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    import torchaudio.functional as AF

    return AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, norm="slaney",
                              mel_scale="slaney")


def _mag(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Magnitude STFT ``[F, frames]`` in float32 (Hann window, centred)."""
    x = x.float()
    win = torch.hann_window(n_fft)
    return torch.stft(x, n_fft, hop, window=win, center=True, return_complex=True).abs()


def mel_distance(reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int,
                 windows: Sequence[int] = (2048, 512), n_mels: Sequence[int] = (80, 40)) -> float:
    """Mean L1 distance between log10 mel spectrograms (clamped at 1e-5), averaged over window
    sizes (hop = window / 4); the mel loss of DAC/EnCodec evaluations. 0 for identical audio."""
    r, e = _pair(reference, estimate)
    total = 0.0
    for w, m in zip(windows, n_mels):
        fb = _mel_fb(sample_rate, w, m)
        mr = (fb.T @ _mag(r, w, w // 4)).clamp_min(1e-5).log10()
        me = (fb.T @ _mag(e, w, w // 4)).clamp_min(1e-5).log10()
        total += float((mr - me).abs().mean())
    return total / len(windows)


def stft_distance(reference: torch.Tensor, estimate: torch.Tensor,
                  windows: Sequence[int] = (2048, 1024, 512, 256, 128)) -> float:
    """Multi-scale STFT distance: mean over window sizes (hop = window / 4) of spectral
    convergence ``|S_r - S_e|_F / |S_r|_F`` plus mean L1 of log magnitudes (clamped at 1e-5).
    0 for identical audio; against silence the log term is large."""
    r, e = _pair(reference, estimate)
    total = 0.0
    for w in windows:
        sr_, se = _mag(r, w, w // 4), _mag(e, w, w // 4)
        sc = float(torch.linalg.norm(sr_ - se) / (torch.linalg.norm(sr_) + EPS))
        logmag = float((sr_.clamp_min(1e-5).log10() - se.clamp_min(1e-5).log10()).abs().mean())
        total += sc + logmag
    return total / len(windows)


def _to_rate(x: torch.Tensor, sample_rate: int, target: int) -> torch.Tensor:
    if sample_rate == target:
        return x
    import torchaudio.functional as AF

    return AF.resample(x.float(), sample_rate, target).double()


def stoi(reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int, extended: bool = False) -> float:
    """Short-time objective intelligibility (Taal et al. 2011; pystoi), in [0, 1] (~1 for identical)."""
    try:
        from pystoi import stoi as _stoi
    except ImportError as e:
        raise ImportError("STOI needs pystoi: pip install 'speechtok[bench]'") from e
    import warnings

    r, e = _pair(reference, estimate)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_stoi(r.numpy(), e.numpy(), sample_rate, extended=extended))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        # pystoi then returns a placeholder 1e-5: the signal has < 30 frames (~384 ms) of speech
        raise ValueError(f"audio too short for STOI ({r.numel() / sample_rate:.3f} s; needs ~0.4 s of speech)")
    return value


def pesq_wb(reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int) -> float:
    """Wideband PESQ (ITU-T P.862.2) at 16 kHz (audio is resampled), MOS-LQO in [1.04, 4.64]."""
    try:
        from pesq import pesq
    except ImportError as e:
        raise ImportError("PESQ needs pesq: pip install 'speechtok[bench]'") from e
    r, e = _pair(reference, estimate)
    r, e = _to_rate(r, sample_rate, 16000), _to_rate(e, sample_rate, 16000)
    return float(pesq(16000, r.numpy(), e.numpy(), "wb"))


# ------------------------------------------------------------------------------------------ text
_NORMALIZER = None


def _whisper_normalizer():
    """Whisper's English normaliser, built once: `whisper_normalizer` (a port of OpenAI's
    ``whisper/normalizers``, shipping its British-to-American spelling table ``english.json``), else
    the port in `transformers` with an empty spelling table (so "colours" stays "colours")."""
    global _NORMALIZER
    if _NORMALIZER is None:
        try:
            from whisper_normalizer.english import EnglishTextNormalizer

            _NORMALIZER = EnglishTextNormalizer()
        except ImportError:
            try:
                from transformers.models.whisper.english_normalizer import EnglishTextNormalizer
            except ImportError as e:
                raise ImportError("WER/CER use Whisper's English normaliser: pip install whisper-normalizer "
                                  "or pip install 'speechtok[bench]'") from e
            import warnings

            warnings.warn("whisper-normalizer is not installed: Whisper's English normaliser runs without its "
                          "spelling table (British spellings are not mapped)", stacklevel=3)
            _NORMALIZER = EnglishTextNormalizer({})
    return _NORMALIZER


def normalize_text(text: str) -> str:
    """Whisper's English text normaliser (Radford et al. 2022, appendix C), the standard before
    WER/CER: lowercase, brackets and fillers ("um", "hmm") removed, contractions and titles
    expanded ("Mr." -> "mister"), spelled-out numbers to digits ("seven" -> "7"), British to
    American spelling ("colours" -> "colors"), punctuation and diacritics removed, spaces squeezed."""
    return _whisper_normalizer()(text)


def _edits(ref: Sequence[str], hyp: Sequence[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


@dataclass(frozen=True)
class ErrorRate:
    """Corpus-level error rate: ``edits / reference_length`` (words for WER, characters for CER)."""

    edits: int
    length: int

    @property
    def rate(self) -> float:
        return self.edits / self.length if self.length else (0.0 if self.edits == 0 else math.inf)


def word_errors(reference: str, hypothesis: str) -> ErrorRate:
    """Word edit distance after `normalize_text` (Whisper's English normaliser); sum `ErrorRate` s over a corpus."""
    r, h = normalize_text(reference).split(), normalize_text(hypothesis).split()
    return ErrorRate(_edits(r, h), len(r))


def char_errors(reference: str, hypothesis: str) -> ErrorRate:
    """Character edit distance (spaces count) after `normalize_text`."""
    r, h = normalize_text(reference), normalize_text(hypothesis)
    return ErrorRate(_edits(list(r), list(h)), len(r))


def corpus_rate(errors: Sequence[ErrorRate]) -> float:
    return ErrorRate(sum(e.edits for e in errors), sum(e.length for e in errors)).rate


# ----------------------------------------------------------------------------------------- codes
@dataclass(frozen=True)
class CodebookUsage:
    """Per-codebook statistics over a set of codes.

    Attributes:
        used: fraction of entries used at least once, per codebook.
        perplexity: ``2 ** entropy`` of the empirical unigram distribution, per codebook.
        entropy_bits: empirical entropy in bits per token, per codebook.
    """

    used: tuple[float, ...]
    perplexity: tuple[float, ...]
    entropy_bits: tuple[float, ...]


def codebook_usage(codes: torch.Tensor, codebook_sizes: Sequence[int]) -> CodebookUsage:
    """Usage of codes ``[K, N]`` (valid tokens only, e.g. items concatenated along time)."""
    if codes.dim() != 2 or codes.shape[0] != len(codebook_sizes):
        raise ValueError(f"codes must be [K={len(codebook_sizes)}, N], got {tuple(codes.shape)}")
    used, ppl, ent = [], [], []
    for k, size in enumerate(codebook_sizes):
        counts = torch.bincount(codes[k].long(), minlength=int(size)).double()
        n = counts.sum()
        p = counts[counts > 0] / n if n > 0 else counts[:0]
        h = float(-(p * p.log2()).sum()) if n > 0 else 0.0
        used.append(float((counts > 0).sum()) / size)
        ent.append(h)
        ppl.append(2 ** h)
    return CodebookUsage(tuple(used), tuple(ppl), tuple(ent))


def entropy_bitrate(codes: torch.Tensor, codebook_sizes: Sequence[int], seconds: float) -> float:
    """Bits per second if each codebook were entropy-coded with its unigram distribution."""
    u = codebook_usage(codes, codebook_sizes)
    return sum(u.entropy_bits) * codes.shape[1] / seconds if seconds > 0 else 0.0
