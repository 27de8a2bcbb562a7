"""The trained models shipped inside the package: they load by name, tokenize the shipped speech
sample, and their resynthesis follows the input (a broken or untrained model would not)."""
import pytest
import torch

import speechtok
from speechtok.audio import load_audio
from speechtok.benchmarks.metrics import mel_distance
from speechtok.registry import BUILTINS, DEFAULT_MODEL, DEFAULT_UNITS_MODEL

TRAINED = ["speechtok-16k-50hz", "units-mfcc500-16k", "units-whisper-tiny-l3-km500"]


@pytest.fixture(scope="module")
def speech():
    from pathlib import Path

    wav, sr = load_audio(Path(speechtok.__file__).parent / "data" / "sample_ljspeech.flac", sample_rate=16000)
    return wav  # [1, S]


def test_default_model_is_the_trained_codec():
    assert DEFAULT_MODEL == "speechtok-16k-50hz"
    tok = speechtok.load()
    assert tok.model_id.startswith("speechtok-16k-50hz@")
    assert (tok.sample_rate, tok.frame_rate, tok.codebook_sizes) == (16000, 50.0, (1024,) * 8)


@pytest.mark.parametrize("name", TRAINED)
def test_trained_builtin_resynthesis_follows_the_input(name, speech):
    assert name in BUILTINS and (BUILTINS[name].path / "README.md").is_file()  # a model card ships with it
    tok = speechtok.load(name)
    codes = tok.encode(speech[None], sample_rate=16000)
    assert codes.codes.shape[0] == 1 and codes.num_frames == pytest.approx(speech.shape[-1] / 16000 * tok.frame_rate, abs=2)
    assert int(codes.codes.min()) >= 0 and all(int(codes.codes[:, k].max()) < n
                                               for k, n in enumerate(codes.codebook_sizes))
    y = tok.decode(codes).audio[0, 0, : speech.shape[-1]]
    x = speech[0, : y.shape[-1]]
    d = mel_distance(x, y, 16000)
    d_reversed = mel_distance(x, y.flip(0), 16000)  # same long-term spectrum, wrong timing
    assert d < 0.85 * d_reversed, (d, d_reversed)
    # the codec's semantic + acoustic codebooks are all in use on real speech (no collapse)
    used = [codes.codes[0, k].unique().numel() for k in range(codes.num_codebooks)]
    assert min(used) > 5, used


def test_default_codec_streams_exactly_like_offline(speech):
    tok = speechtok.load()
    x = speech[None, :, : 16000]
    offline = tok.encode(x, sample_rate=16000).codes
    with tok.stream(1) as s:
        got = [s.encode(chunk) for chunk in torch.split(x, 997, dim=-1)] + [s.flush()]
    assert torch.equal(torch.cat(got, dim=-1), offline)


def test_main_job_without_model_uses_the_default(tmp_path):
    """The README's main command: encode the shipped sample with the default model, inspect, decode."""
    from pathlib import Path

    from click.testing import CliRunner

    from speechtok.cli.main import main
    from speechtok.codesfile import load_codes

    sample = Path(speechtok.__file__).parent / "data" / "sample_ljspeech.flac"
    r = CliRunner().invoke(main, ["encode", str(sample), "-o", str(tmp_path / "s.stok"), "--quiet"])
    assert r.exit_code == 0, r.output
    codes = load_codes(tmp_path / "s.stok")
    assert codes.model_id.startswith(DEFAULT_MODEL + "@")
    r = CliRunner().invoke(main, ["info", str(tmp_path / "s.stok")])
    assert r.exit_code == 0 and DEFAULT_MODEL in r.output
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "s.stok"), "-o", str(tmp_path / "s.wav"), "--quiet"])
    assert r.exit_code == 0, r.output
    wav, sr = load_audio(tmp_path / "s.wav")
    ref, ref_sr = load_audio(sample)
    assert sr == 16000 and abs(wav.shape[-1] / sr - ref.shape[-1] / ref_sr) < 0.02


def test_units_default_is_the_whisper_units_and_needs_no_weights_outside_its_directory(speech, monkeypatch):
    """`load("units")` is the built-in Whisper units; its encoder ships in its directory: with the
    installed Whisper weights made unfindable it still encodes, through the PyTorch Whisper."""
    import speechtok.benchmarks.asr as asr

    def nowhere(name="base", cache=None):
        raise asr.WhisperModelNotFound(f"whisper:{name} hidden by the test")

    monkeypatch.setattr(asr, "whisper_model_dir", nowhere)
    tok = speechtok.load("units")
    assert DEFAULT_UNITS_MODEL == "units-whisper-tiny-l3-km500" == tok.model_id.split("@")[0]
    spec = tok.spec
    assert (spec.kind, spec.layer, spec.frame_rate, tok.units_codebook_sizes) == ("whisper", 3, 50.0, (500,))
    assert spec.options["pad_to_window"] is False
    codes = tok.encode(speech[None], sample_rate=16000)
    assert codes.codebook_sizes == (500,) and codes.num_frames == -(-speech.shape[-1] // 320)
