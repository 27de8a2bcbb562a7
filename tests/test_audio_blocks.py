import os

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtok.audio import AudioError, audio_info, iter_audio_blocks, load_audio


def _write(path, rate, seconds, channels=1, subtype=None, seed=0):
    """Noise plus a few sines; a length in samples that is not a round number."""
    rng = np.random.default_rng(seed)
    frames = int(rate * seconds) + 7
    t = np.arange(frames) / rate
    x = np.stack([0.1 * rng.standard_normal(frames) + 0.3 * np.sin(2 * np.pi * f * t)
                  + 0.2 * np.sin(2 * np.pi * 3.1 * f * t) for f in (220.0, 523.0)[:channels]], 1)
    sf.write(str(path), x.astype("float32"), rate, subtype=subtype)
    return frames


@pytest.mark.parametrize("orig,new", [(22050, 24000), (44100, 16000), (16000, 24000), (48000, 16000),
                                      (8000, 16000), (16000, None), (16000, 16000)])
@pytest.mark.parametrize("block_seconds", [0.05, 0.37, 1.0])
def test_blocks_concatenate_to_load_audio(tmp_path, orig, new, block_seconds):
    p = tmp_path / "x.wav"
    _write(p, orig, 2.3)
    ref = load_audio(p, new)[0]
    blocks = list(iter_audio_blocks(p, new, block_seconds=block_seconds))
    assert len(blocks) > 1
    for b in blocks:
        assert b.dtype == torch.float32 and b.is_contiguous() and b.shape[0] == 1
    got = torch.cat(blocks, dim=-1)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("orig,new", [(44100, 16000), (22050, 24000), (24000, None)])
@pytest.mark.parametrize("mono", [True, False])
def test_stereo(tmp_path, orig, new, mono):
    p = tmp_path / "s.flac"
    _write(p, orig, 1.6, channels=2)
    ref = load_audio(p, new, mono=mono)[0]
    assert ref.shape[0] == (1 if mono else 2)
    got = torch.cat(list(iter_audio_blocks(p, new, mono=mono, block_seconds=0.37)), dim=-1)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile without MP3")
@pytest.mark.parametrize("new", [None, 16000])
def test_mp3_read_in_pieces(tmp_path, new):
    # SoundFile.read seeks after every read, which makes libsndfile's MP3 decoder drop its bit
    # reservoir: on this file, pieces read that way differ from the whole-file read by ~0.5.
    p = tmp_path / "sine.mp3"
    sf.write(str(p), (0.5 * np.sin(np.arange(3 * 24000) / 10))[:, None].astype("float32"), 24000)
    ref = load_audio(p, new)[0]
    got = torch.cat(list(iter_audio_blocks(p, new, block_seconds=0.2)), dim=-1)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_file_length_a_multiple_of_the_block(tmp_path):
    p = tmp_path / "x.wav"
    sf.write(str(p), np.random.default_rng(1).standard_normal(44100).astype("float32") * 0.1, 44100)
    for new in (None, 16000):
        ref = load_audio(p, new)[0]
        blocks = list(iter_audio_blocks(p, new, block_seconds=0.1))  # 10 blocks of 4410 samples
        assert len(blocks) == 10 and all(b.shape[-1] > 0 for b in blocks)
        torch.testing.assert_close(torch.cat(blocks, dim=-1), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("orig,new", [(22050, 24000), (44100, 16000), (8000, 16000), (16000, None)])
def test_blocks_are_bounded(tmp_path, orig, new):
    p = tmp_path / "x.wav"
    _write(p, orig, 3.0)
    out_rate = new or orig
    blocks = list(iter_audio_blocks(p, new, block_seconds=0.1))
    assert len(blocks) >= 29
    assert max(b.shape[-1] for b in blocks) <= 0.1 * out_rate + 4


def test_audio_info(tmp_path):
    frames = _write(tmp_path / "a.wav", 22050, 1.0, channels=2)
    assert audio_info(tmp_path / "a.wav") == (frames, 22050, 2)
    frames = _write(tmp_path / "b.flac", 16000, 0.5)
    assert audio_info(str(tmp_path / "b.flac")) == (frames, 16000, 1)


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="no such file") as e:
        audio_info(missing)
    assert str(missing) in str(e.value)
    with pytest.raises(AudioError, match="no such file") as e:
        next(iter_audio_blocks(missing))
    assert str(missing) in str(e.value)

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for fn in (audio_info, lambda p: next(iter_audio_blocks(p, 24000))):
        with pytest.raises(AudioError, match="empty file") as e:
            fn(empty)
        assert str(empty) in str(e.value)

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(os.urandom(300))
    for fn in (audio_info, lambda p: next(iter_audio_blocks(p))):
        with pytest.raises(AudioError, match="unreadable or corrupt") as e:
            fn(corrupt)
        assert str(corrupt) in str(e.value)

    zero = tmp_path / "zero.wav"
    sf.write(str(zero), np.zeros((0, 1), "float32"), 16000)
    for fn in (audio_info, lambda p: next(iter_audio_blocks(p))):
        with pytest.raises(AudioError, match="empty audio") as e:
            fn(zero)
        assert str(zero) in str(e.value)


@pytest.mark.parametrize("where", [5, 12000])
@pytest.mark.parametrize("new", [None, 24000])
def test_nan_samples(tmp_path, where, new):
    x = np.zeros(16000, "float32")
    x[where] = np.nan
    p = tmp_path / "nan.wav"
    sf.write(str(p), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN/inf samples") as e:
        for _ in iter_audio_blocks(p, new, block_seconds=0.1):
            pass
    assert str(p) in str(e.value)
    if where == 5:  # in the first block: the first next() raises
        with pytest.raises(AudioError, match="NaN/inf"):
            next(iter_audio_blocks(p, new, block_seconds=0.1))
