"""Model-based quality metrics (speechtok.benchmarks.quality) on the shipped LJSpeech sample and on
synthetic signals with known answers, plus Whisper's English normaliser for WER/CER. Each backend's
tests skip when its package (speechtok[bench]) is not installed; the real weights ship in the wheels."""
from __future__ import annotations

import math
import sys

import pytest
import torch

import speechtok
from speechtok.benchmarks import metrics as M
from speechtok.benchmarks import quality as Q

SR = 16000


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the LSTM/WavLM forward passes are tiny, and on a shared 2-core machine more
    threads only spin against each other (5x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    """The shipped LJSpeech sample (1.9 s) as float ``[S]`` at 16 kHz."""
    from pathlib import Path

    path = Path(speechtok.__file__).resolve().parent / "data" / "sample_ljspeech.flac"
    wav, _ = speechtok.load_audio(path, sample_rate=SR)
    return wav[0].float()


def white_noise(x: torch.Tensor, snr_db: float, seed: int = 0) -> torch.Tensor:
    """``x`` plus white Gaussian noise at `snr_db` (power ratio over the whole clip)."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(x.shape, generator=g, dtype=torch.float64)
    n = n * torch.sqrt(x.double().pow(2).mean() / n.pow(2).mean() / 10 ** (snr_db / 10))
    return (x.double() + n).float()


def vocal_tract_scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """A different-sounding voice: resample by `factor` and play at the old rate, which scales
    formants and pitch together by 1 / factor (a longer or shorter vocal tract)."""
    import torchaudio.functional as AF

    return AF.resample(x, SR, int(SR * factor))


def harmonic(f0_hz: torch.Tensor) -> torch.Tensor:
    """A voiced, vowel-like signal following the per-sample F0 contour `f0_hz` ``[S]``."""
    phase = 2 * math.pi * torch.cumsum(f0_hz.double(), 0) / SR
    x = sum(torch.sin(h * phase) / h for h in range(1, 10))
    return (0.2 * x / x.abs().max()).float()


# --------------------------------------------------------------------------------- speaker similarity
def test_speaker_similarity_identity_noise_and_another_voice(speech):
    pytest.importorskip("resemblyzer")
    assert Q.speaker_similarity(speech, speech, SR) == pytest.approx(1.0, abs=1e-5)
    # resampled to 16 kHz inside: the sample given at 24 kHz embeds like the 16 kHz original
    import torchaudio.functional as AF

    e16, e24 = Q.speaker_embedding(speech, SR), Q.speaker_embedding(AF.resample(speech, SR, 24000), 24000)
    assert float(e16 @ e24) > 0.95
    mild, harsh = Q.speaker_similarity(speech, white_noise(speech, 20.0), SR), \
        Q.speaker_similarity(speech, white_noise(speech, 0.0), SR)
    assert harsh < mild < 1.0 and harsh < 0.8
    # same voice, other words (the two halves) vs another voice saying the second half's words
    half = speech.numel() // 2
    first, second = speech[:half], speech[half:]
    same = Q.speaker_similarity(first, second, SR)
    other = Q.speaker_similarity(first, vocal_tract_scaled(second, 1.25), SR)
    assert other < same - 0.05, (same, other)


def test_speaker_similarity_wavlm_sv_directory(tmp_path, speech):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.WavLMConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, tdnn_dim=(16, 16, 32), tdnn_kernel=(3, 3, 1), tdnn_dilation=(1, 2, 1),
        xvector_output_dim=12, num_buckets=32, max_bucket_distance=64)
    torch.manual_seed(0)
    transformers.WavLMForXVector(cfg).save_pretrained(tmp_path / "sv")
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True).save_pretrained(tmp_path / "sv")
    model = f"wavlm-sv:{tmp_path / 'sv'}"
    emb = Q.speaker_embedding(speech, SR, model=model)
    assert emb.shape == (12,) and float(emb.norm()) == pytest.approx(1.0, abs=1e-5)
    assert Q.speaker_similarity(speech, speech, SR, model=model) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= Q.speaker_similarity(speech, white_noise(speech, 0.0), SR, model=model) <= 1.0
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        Q.speaker_similarity(speech, speech, SR, model=f"wavlm-sv:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="unknown speaker model"):
        Q.speaker_similarity(speech, speech, SR, model="ecapa")
    # the bench names it speaker_similarity:wavlm-sv:DIR; same key, same numbers
    from speechtok.benchmarks.bench_quality import plan_quality, score

    noisy = white_noise(speech, 0.0)
    plan = plan_quality([f"speaker_similarity:{model}"])
    assert [s.name for s in plan.specs] == ["speaker_similarity"] and not plan.notes
    assert score(plan.specs[0], speech, noisy, SR) == {
        "speaker_similarity": pytest.approx(Q.speaker_similarity(speech, noisy, SR, model=model), abs=1e-6)}
    assert Q.metric_spec("speaker_similarity:ecapa") is None and Q.metric_spec("dnsmos:x") is None
    assert "unknown quality metric" in plan_quality(["speaker_similarity:ecapa"]).notes[0]


# -------------------------------------------------------------------------------------------- DNSMOS
def test_dnsmos_noise_lowers_background_and_overall(speech):
    pytest.importorskip("speechmos")
    # 2.3 s: DNSMOS tiles short clips to >= 9.01 s by doubling and scores 1 s hops, so this length
    # is one 9.01 s window (the 1.9 s sample alone would be seven)
    speech = torch.cat([speech, speech[: int(0.4 * SR)]])
    clean = Q.dnsmos(speech, SR)
    assert set(clean) == {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"}
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    noisy = Q.QUALITY_METRICS["dnsmos"].fn(speech, white_noise(speech, 5.0), SR)  # scores the estimate
    assert noisy["dnsmos_bak"] < clean["dnsmos_bak"] - 1.0
    assert noisy["dnsmos_ovrl"] < clean["dnsmos_ovrl"] - 0.5
    # non-intrusive: the reference does not enter the score
    assert Q.dnsmos_metric(torch.zeros_like(speech), speech, SR) == pytest.approx(clean)


# -------------------------------------------------------------------------------------------- ViSQOL
def test_visqol_speech_identity_and_noise(speech):
    pytest.importorskip("visqol")
    pytest.importorskip("ai_edge_litert")
    same = Q.visqol(speech, speech, SR)
    assert same > 4.4  # the lattice mapping's ceiling is ~4.56 on clean speech
    noisy = [Q.visqol(speech, white_noise(speech, snr), SR) for snr in (40.0, 20.0)]
    assert same > noisy[0] > noisy[1] >= 1.0
    assert Q.visqol(speech, speech, SR, mapper="polynomial") == pytest.approx(5.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------ F0
def test_f0_identity_and_known_pitch_shift():
    pytest.importorskip("librosa")
    t = torch.arange(int(1.5 * SR)) / SR
    f0 = 150 + 40 * torch.sin(2 * math.pi * 1.5 * t)  # a moving contour, 110-190 Hz
    x = harmonic(f0)
    assert Q.f0_metrics(x, x, SR) == {"f0_rmse_cents": 0.0, "f0_corr": pytest.approx(1.0), "voicing_error": 0.0}
    shifted = harmonic(f0 * 2 ** (200 / 1200))
    m = Q.f0_metrics(x, shifted, SR)
    assert m["f0_rmse_cents"] == pytest.approx(200.0, abs=15.0)
    assert m["f0_corr"] > 0.98 and m["voicing_error"] < 0.05
    # an unvoiced estimate (noise): nearly every frame's voicing disagrees
    noise = 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert Q.f0_metrics(x, noise, SR)["voicing_error"] > 0.8


def test_f0_real_speech_pitch_shift(speech):
    librosa = pytest.importorskip("librosa")
    ident = Q.f0_metrics(speech, speech, SR)
    assert ident["f0_rmse_cents"] == 0.0 and ident["voicing_error"] == 0.0
    up = torch.from_numpy(librosa.effects.pitch_shift(speech.numpy(), sr=SR, n_steps=2.0))  # +200 cents
    m = Q.f0_metrics(speech, up, SR)
    assert m["f0_rmse_cents"] == pytest.approx(200.0, abs=40.0)
    assert m["f0_corr"] > 0.8 and m["voicing_error"] < 0.2


# ------------------------------------------------------------------------------------ table, backends
def test_quality_table_shape():
    assert set(Q.QUALITY_METRICS) == {"speaker_similarity", "dnsmos", "visqol", "f0"}
    for name, spec in Q.QUALITY_METRICS.items():
        assert spec.name == name and callable(spec.fn) and spec.keys and spec.requires
        assert all(isinstance(spec.better(k), bool) for k in spec.keys)
    assert Q.QUALITY_METRICS["dnsmos"].needs_reference is False
    f0 = Q.QUALITY_METRICS["f0"]
    assert (f0.better("f0_rmse_cents"), f0.better("f0_corr"), f0.better("voicing_error")) == (False, True, False)
    with pytest.raises(Exception):
        f0.unit = "x"  # frozen


def test_missing_backend_names_package_and_extra(monkeypatch, speech):
    monkeypatch.setattr(Q, "_CACHE", {})
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # import resemblyzer -> ImportError
    monkeypatch.setitem(sys.modules, "speechmos.dnsmos", None)
    assert not Q.available("speaker_similarity") and not Q.available("dnsmos")
    with pytest.raises(ImportError, match=r"resemblyzer.*speechtok\[bench\]"):
        Q.speaker_similarity(speech, speech, SR)
    with pytest.raises(ImportError, match=r"speechmos.*speechtok\[bench\]"):
        Q.dnsmos(speech, SR)
    assert Q.available("f0")  # librosa is a core dependency


def test_import_speechtok_stays_light():
    import subprocess

    code = ("import sys, speechtok, speechtok.benchmarks.quality\n"
            "heavy = [m for m in ('resemblyzer', 'speechmos', 'visqol', 'onnxruntime', 'transformers', 'librosa')"
            " if m in sys.modules]\nassert not heavy, heavy\n")
    subprocess.run([sys.executable, "-P", "-c", code], check=True)


# ------------------------------------------------------------------------------- WER/CER normaliser
def test_whisper_english_normaliser_cases():
    pytest.importorskip("whisper_normalizer")
    assert M.normalize_text("Mr. Smith's 10 colours") == M.normalize_text("mister smith's ten colors")
    assert M.word_errors("Mr. Smith's 10 colours", "mister smith's ten colors").rate == 0.0
    assert M.char_errors("Mr. Smith's 10 colours", "mister smith's ten colors").rate == 0.0
    assert M.normalize_text("Seven.") == "7"
    assert M.normalize_text("Hello, [laughs] um, WORLD!") == "hello world"
    assert M.word_errors("the colour red", "the color blue").rate == pytest.approx(1 / 3)
