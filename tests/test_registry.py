"""speechtok.load and the protocol every built-in model must pass."""
import json
import os

import pytest
import torch

import speechtok
from speechtok import Codes, CodesError
from speechtok.registry import BUILTINS, ModelLoadError, load, save_model_dir



@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_conforms_to_protocol(name, make_tone):
    tone = make_tone
    tok = load(name)
    assert isinstance(tok, speechtok.Tokenizer)
    assert tok.model_id.startswith(name + "@") and len(tok.codebook_sizes) >= 1
    a, b = tone(0.3, 22050, 200), tone(0.17, 22050, 330)  # another rate than the model's: resampled
    one = [tok.encode(x, sample_rate=22050) for x in (a, b)]
    batch = torch.zeros(2, 1, a.shape[-1])
    batch[0, :, :a.shape[-1]], batch[1, :, :b.shape[-1]] = a, b
    both = tok.encode(batch, sample_rate=22050, lengths=torch.tensor([a.shape[-1], b.shape[-1]]))
    both.validate()
    for i, c in enumerate(both.unbatch()):  # batched with padding == per item, exactly
        assert torch.equal(c.codes, one[i].codes) and torch.equal(c.lengths, one[i].lengths)
    assert both.frame_rate == tok.frame_rate and both.model_id == tok.model_id
    for n in (0, 1):  # empty and one-sample inputs give valid (possibly empty) codes
        tok.encode(torch.zeros(1, n), sample_rate=tok.sample_rate).validate()
    if tok.can_decode:
        wav = tok.decode(both)
        assert wav.sample_rate == tok.sample_rate and wav.audio.shape[0] == 2
        assert torch.isfinite(wav.audio).all()
        other = both.with_(model_id="someone-else@000")
        with pytest.raises(CodesError, match="made by model"):
            tok.decode(other)


def test_mulaw_decode_is_close_and_durations_expand(make_tone):
    tone = make_tone
    tok = load("mulaw-16k")
    x = tone(0.1, 16000)
    c = tok.encode(x, sample_rate=16000)
    y = tok.decode(c)
    assert (y.audio[0] - x).abs().max() < 0.01  # 8-bit mu-law step near 0.3 amplitude
    # run-length durations are expanded before decoding
    d = torch.ones_like(c.codes[:, 0])
    dd = c.with_(durations=d)
    assert torch.equal(tok.decode(dd).audio, y.audio)


def test_unknown_name_lists_builtins(tmp_path):
    with pytest.raises(ModelLoadError, match="built-ins: .*mulaw-16k"):
        load("no-such-model")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="f.txt: expected a model directory .* got another file"):
        load(tmp_path / "f.txt")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load(tmp_path)


def test_no_default_until_one_ships(monkeypatch):
    import speechtok.registry as reg

    monkeypatch.setattr(reg, "DEFAULT_MODEL", None)
    with pytest.raises(ModelLoadError, match="no default model"):
        load()
    monkeypatch.setattr(reg, "DEFAULT_MODEL", "mulaw-16k")
    assert load().name == "mulaw-16k"


def test_saved_directory_round_trip_and_version_refusal(tmp_path):
    d = save_model_dir(tmp_path / "m", kind="mulaw", name="my-mulaw", config={"sample_rate": 8000, "bits": 6})
    tok = load(d)
    mask = os.umask(0)
    os.umask(mask)
    assert d.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (d / "config.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert tok.sample_rate == 8000 and tok.codebook_sizes == (64,) and tok.model_id.startswith("my-mulaw@")
    meta = json.loads((d / "config.json").read_text())
    meta["format_version"] = 7
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="version 7 is newer"):
        load(d)
    meta["format_version"], meta["kind"] = 1, "warp-drive"
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="unknown model kind 'warp-drive'"):
        load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable model config"):
        load(d)


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, speechtok; speechtok.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "False", out.stderr
