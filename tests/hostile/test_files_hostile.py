"""Hostile and careless input to codes files, file encode/decode, audio loading and API arguments.

Every file is made here, in tmp_path; the only model used is the weightless ``mulaw-16k`` (and a
tiny random codec where several codebooks are needed). Each bad input must give a one-line error
naming the file (or option) and the problem, and leave no partial output.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid

import numpy as np
import pytest
import soundfile as sf
import torch

import speechtok
from speechtok.audio import AudioError, audio_info, load_audio, save_audio
from speechtok.codes import Codes
from speechtok.codesfile import CodesFileError, load_codes, read_codes_metadata, save_codes
from speechtok.files import decode_files, encode_files
from speechtok.formats import MAX_EXPANDED_FRAMES


@pytest.fixture(scope="module")
def mulaw():
    return speechtok.load("mulaw-16k")


def _wav(path, seconds=0.1, rate=16000, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    x = (0.2 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32)
    sf.write(str(path), x, rate)
    return path


def _codes(B=1, T=6, durations=None, audio_lengths=True):
    raw = torch.randint(0, 1024, (B, 2, T), generator=torch.Generator().manual_seed(0))
    return Codes.from_tensor(raw, torch.full((B,), T), frame_rate=50.0, codebook_sizes=(1024, 1024),
                             sample_rate=16000, model_id="m@0123456789ab", durations=durations,
                             audio_lengths=torch.full((B,), T * 320) if audio_lengths else None)


def _rewrite(path, meta_changes=None, drop=(), tensors=None):
    """Rewrite a codes file's metadata (``None`` value: delete the key) and/or tensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["speechtok"])
    for k, v in (meta_changes or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    t = load_file(str(path))
    t.update(tensors or {})
    for k in drop:
        t.pop(k)
    save_file(t, str(path), metadata={"speechtok": json.dumps(meta)})
    return path


def _one_line_error(fn, match, path):
    with pytest.raises(CodesFileError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)) and match in msg, msg
    return msg


# ---------------------------------------------------------------- 1. codes files are validated
@pytest.mark.parametrize("changes, match", [
    ({"model_id": None}, "lacks 'model_id'"),
    ({"model_id": 7}, "'model_id' must be str"),
    ({"sample_rate": "16000"}, "'sample_rate' must be int"),
    ({"sample_rate": 0}, "'sample_rate'=0 is out of range"),
    ({"frame_rate": 0}, "'frame_rate' must be > 0"),
    ({"frame_rate": None}, "lacks 'frame_rate'"),
    ({"codebook_sizes": [1024, 0]}, "'codebook_sizes' holds 0"),
    ({"codebook_sizes": [1024, True]}, "'codebook_sizes' holds True"),
    ({"codebook_sizes": [1024, 2 ** 40]}, "'codebook_sizes' holds"),
    ({"codebook_sizes": [1024]}, "has 2 codebooks but metadata 'codebook_sizes' lists 1"),
    ({"codebook_sizes": "1024,1024"}, "'codebook_sizes' must be list"),
    ({"n_semantic": 5}, "'n_semantic'=5 is out of range"),
    ({"source": ["a"]}, "'source' must be str"),
    ({"lengths": [3]}, "metadata 'lengths' disagrees"),
    ({"source_sample_rate": -1}, "'source_sample_rate'=-1 is out of range"),
    ({"format_version": "1"}, "invalid codes format version"),
])
def test_bad_metadata_is_one_line_error(tmp_path, changes, match):
    p = _rewrite(save_codes(tmp_path / "x.stok", _codes()), changes)
    _one_line_error(lambda: load_codes(p), match, p)


@pytest.mark.parametrize("tensors, drop, match", [
    ({"codes": torch.zeros(1, 2, 6)}, (), "'codes' has dtype F32"),
    ({"lengths": torch.tensor([6.0])}, (), "'lengths' has dtype F32"),
    ({"lengths": torch.tensor([6, 6])}, (), "'lengths' must have shape [1]"),
    ({"lengths": torch.tensor([7])}, (), "lengths must lie in [0, T=6]"),
    ({"codes": torch.zeros(1, 2, 6, 1, dtype=torch.int16)}, (), "must be [B, K, T]"),
    ({"audio_lengths": torch.tensor([1, 2])}, (), "'audio_lengths' must have shape [1]"),
    ({"audio_lengths": torch.tensor([2 ** 40])}, (), "does not fit its 6 frames"),
    ({"audio_lengths": torch.tensor([-5])}, (), "audio_lengths must be >= 0"),
    ({"durations": torch.ones(1, 5, dtype=torch.int32)}, (), "'durations' must have shape [1, 6]"),
    ({}, ("lengths",), "lacks 'codes' or 'lengths'"),
])
def test_bad_tensors_are_one_line_errors(tmp_path, tensors, drop, match):
    p = _rewrite(save_codes(tmp_path / "x.stok", _codes()), tensors=tensors, drop=drop)
    _one_line_error(lambda: load_codes(p), match, p)


@pytest.mark.parametrize("value", [-1, 1024, 32767])
def test_code_values_outside_the_codebook_are_refused(tmp_path, value):
    p = save_codes(tmp_path / "x.stok", _codes())
    c = load_codes(p).codes.to(torch.int16)
    c[0, 1, 2] = value
    _rewrite(p, tensors={"codes": c})
    _one_line_error(lambda: load_codes(p), f"code {value} at item 0, codebook 1, frame 2", p)


def test_oversized_durations_are_refused_before_expanding(tmp_path, mulaw):
    """A small file whose durations claim hours (or 2**31-1 frames) is refused up front, not decoded."""
    d = torch.ones(1, 6, dtype=torch.long)
    p = save_codes(tmp_path / "d.stok", _codes(durations=d))
    assert os.path.getsize(p) < 12_000
    big = torch.tensor([[1, 2_000_000, 1, 1, 1, 1]], dtype=torch.int32)
    _rewrite(p, tensors={"durations": big})  # audio_lengths say 6 frames
    _one_line_error(lambda: load_codes(p), "does not fit its 2000005 frames", p)
    _rewrite(p, tensors={"durations": torch.full((1, 6), 2 ** 31 - 1, dtype=torch.int32)}, drop=("audio_lengths",))
    msg = _one_line_error(lambda: load_codes(p), "more than", p)
    assert str(MAX_EXPANDED_FRAMES) in msg
    # each item within the bound, the padded batch not
    d2 = torch.ones(2, 6, dtype=torch.long)
    p2 = save_codes(tmp_path / "d2.stok", _codes(B=2, durations=d2, audio_lengths=False))
    _rewrite(p2, tensors={"durations": torch.tensor([[5_000_000] + [1] * 5] * 2, dtype=torch.int32)})
    _one_line_error(lambda: load_codes(p2), "(2 items x 5000005), more than", p2)
    # decode_files reports it (named) and writes nothing
    q = save_codes(tmp_path / "in" / "m.stok", mulaw.encode(torch.zeros(1, 1600)).with_(
        durations=torch.ones(1, 1600, dtype=torch.long)))
    _rewrite(q, tensors={"durations": torch.full((1, 1600), 2 ** 31 - 1, dtype=torch.int32)}, drop=("audio_lengths",))
    report = decode_files([q], tmp_path / "out", progress=False)
    assert len(report.failed) == 1 and "m.stok" in report.failed[0][1]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_old_files_without_source_keys_still_load(tmp_path):
    p = _rewrite(save_codes(tmp_path / "x.stok", _codes()), {"n_semantic": None, "lengths": None})
    assert load_codes(p).n_semantic == 0


# ---------------------------------------------------------------- 2. resume only what is complete and the same
def _encode(inputs, out, tok, **kw):
    return encode_files(inputs, out, tok, progress=False, **kw)


def test_resume_redoes_other_model_empty_corrupt_and_changed_source(tmp_path, mulaw):
    from speechtok.mulaw import MuLawConfig, MuLawTokenizer

    src = tmp_path / "in"
    src.mkdir()
    for n in "abcde":
        _wav(src / f"{n}.wav", seed=ord(n))
    out = tmp_path / "out"
    assert len(_encode([src], out, mulaw).written) == 5
    six = MuLawTokenizer(MuLawConfig(bits=6), name="mulaw-16k")  # same name, other model
    _encode([src / "b.wav"], out / "b.stok", six, force=True)
    (out / "c.stok").write_bytes(b"")
    (out / "d.stok").write_bytes((out / "d.stok").read_bytes()[:200])
    _wav(src / "e.wav", seconds=0.2, seed=9)  # the source changed since
    r = _encode([src], out, mulaw)
    assert [p.name for p in r.skipped] == ["a.stok"]
    reasons = {p.name: why for p, why in r.redone}
    assert sorted(reasons) == ["b.stok", "c.stok", "d.stok", "e.stok"] and sorted(p.name for p in r.written) == \
        ["b.stok", "c.stok", "d.stok", "e.stok"]
    assert "made by model" in reasons["b.stok"] and "not a speechtok codes file" in reasons["c.stok"]
    assert "different version" in reasons["e.stok"]
    for n in "abcde":
        assert load_codes(out / f"{n}.stok", expect_model_id=mulaw.model_id)
    assert len(_encode([src], out, mulaw).skipped) == 5  # now all are kept


def test_resume_redoes_other_codebooks(tmp_path):
    from speechtok.codec import CodecTokenizer, preset

    tok = CodecTokenizer.from_config(preset("tiny"), seed=0)
    _wav(tmp_path / "a.wav", seconds=0.2)
    out = tmp_path / "out"
    assert _encode([tmp_path / "a.wav"], out, tok, num_codebooks=2).written
    r = _encode([tmp_path / "a.wav"], out, tok, num_codebooks=3)
    assert r.written and "has 2 codebooks, this run keeps 3" in r.redone[0][1]
    assert load_codes(out / "a.stok").num_codebooks == 3
    assert _encode([tmp_path / "a.wav"], out, tok, num_codebooks=3).skipped
    r = _encode([tmp_path / "a.wav"], out, tok)  # all codebooks: not the 3 kept before
    assert r.redone and load_codes(out / "a.stok").num_codebooks == tok.num_codebooks


@pytest.mark.parametrize("kw, match", [({"num_codebooks": 0}, "num_codebooks"), ({"num_codebooks": 2}, r"\[1, 1\]"),
                                       ({"batch_size": 0}, "batch_size")])
def test_bad_encode_arguments_write_nothing(tmp_path, mulaw, kw, match):
    from speechtok.files import FilesError

    _wav(tmp_path / "a.wav")
    with pytest.raises(FilesError, match=match):
        _encode([tmp_path / "a.wav"], tmp_path / "out", mulaw, **kw)
    assert not (tmp_path / "out").exists()


def test_source_moved_is_redone(tmp_path, mulaw):
    _wav(tmp_path / "a.wav")
    _encode([tmp_path / "a.wav"], tmp_path / "x.stok", mulaw)
    _wav(tmp_path / "b.wav")
    r = _encode([tmp_path / "b.wav"], tmp_path / "x.stok", mulaw)
    assert r.redone and "made from" in r.redone[0][1]


def test_leftover_temp_files_are_never_inputs(tmp_path, mulaw):
    src = tmp_path / "in"
    src.mkdir()
    _wav(src / "a.wav")
    (src / f".a.wav.tmp-{uuid.uuid4().hex[:8]}.wav").write_bytes(b"RIFF half a file")
    out = tmp_path / "out"
    r = _encode([src], out, mulaw)
    assert r.ok and [p.name for p in r.written] == ["a.stok"]
    (out / ".a.stok.tmp-xyz.stok").write_bytes(b"partial")
    r = decode_files([out], tmp_path / "wav", progress=False)
    assert r.ok and [p.name for p in r.written] == ["a.wav"]


def test_decode_redoes_empty_or_other_rate_output(tmp_path, mulaw):
    _wav(tmp_path / "a.wav", rate=22050, channels=2)
    _encode([tmp_path / "a.wav"], tmp_path / "a.stok", mulaw)
    out = tmp_path / "a_out.wav"
    out.write_bytes(b"")
    r = decode_files([tmp_path / "a.stok"], out, progress=False)
    assert r.written and "empty file" in r.redone[0][1] and audio_info(out)[1] == 16000
    assert decode_files([tmp_path / "a.stok"], out, progress=False).skipped
    r = decode_files([tmp_path / "a.stok"], out, progress=False, match_source=True)
    assert r.written and "this run writes 22050 Hz" in r.redone[0][1]


# ---------------------------------------------------------------- 4. API arguments
@pytest.mark.parametrize("sr", [0, -16000, 16000.5, True, float("nan"), "16000"])
def test_bad_sample_rate_is_refused(mulaw, sr):
    with pytest.raises(ValueError, match="sample_rate must be an integer number of Hz"):
        mulaw.encode(torch.zeros(1, 100), sample_rate=sr)


def test_numpy_audio_is_accepted(mulaw):
    x = (0.1 * np.random.default_rng(0).standard_normal((1, 800))).astype(np.float64)
    ref = mulaw.encode(torch.from_numpy(x).float())
    x.setflags(write=False)
    assert torch.equal(mulaw.encode(x).codes, ref.codes)
    assert torch.equal(mulaw.encode(x[None], lengths=np.array([800])).codes, ref.codes)
    with pytest.raises(TypeError, match="numpy array of int16"):
        mulaw.encode(np.zeros((1, 10), np.int16))
    with pytest.raises(TypeError, match="got list"):
        mulaw.encode([[0.0, 0.1]])


@pytest.mark.parametrize("shape", [(100,), (1, 1, 1, 100), (1, 0, 100)])
def test_wrong_dims_are_refused(mulaw, shape):
    with pytest.raises(ValueError, match="shape"):
        mulaw.encode(torch.zeros(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_samples_are_refused(mulaw, bad):
    x = torch.zeros(2, 1, 100)
    x[1, 0, 10] = bad
    with pytest.raises(ValueError, match=r"1 NaN/inf samples \(items \[1\]\)"):
        mulaw.encode(x)
    x[1, 0, 50:] = bad  # NaN in padding only: fine, and it stays out of the codes
    x[1, 0, 10] = 0
    c = mulaw.encode(x, lengths=torch.tensor([100, 50]))
    assert c.lengths.tolist() == [100, 50] and c.validate()


@pytest.mark.parametrize("lengths", [[101], [-1], [50.5], [True], [10, 10]])
def test_lengths_out_of_range_are_refused(mulaw, lengths):
    with pytest.raises(ValueError, match="lengths must be"):
        mulaw.encode(torch.zeros(1, 1, 100), lengths=torch.tensor(lengths))


@pytest.mark.parametrize("k", [0, 2, -1, True, 1.0])
def test_bad_num_codebooks_is_refused_before_encoding(mulaw, k):
    with pytest.raises(ValueError, match=r"num_codebooks must be an integer in \[1, 1\]"):
        mulaw.encode(torch.zeros(1, 100), num_codebooks=k)


def test_nan_in_a_file_names_the_file(tmp_path, mulaw):
    x = np.zeros(1600, "float32")
    x[7] = np.inf
    sf.write(str(tmp_path / "inf.wav"), x, 16000, subtype="FLOAT")
    r = _encode([tmp_path / "inf.wav"], tmp_path / "out", mulaw)
    assert "inf.wav: 1 NaN/inf samples" in r.failed[0][1] and not (tmp_path / "out" / "inf.stok").exists()


# ---------------------------------------------------------------- 5. audio files
def test_truncated_wav_is_reported(tmp_path, mulaw):
    p = _wav(tmp_path / "t.wav", seconds=0.5)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    for fn in (load_audio, audio_info):
        with pytest.raises(AudioError, match=r"t\.wav: truncated WAV: its header promises 8000 sample frames, "
                                             r"the file holds 39\d\d"):
            fn(p)
    r = _encode([p], tmp_path / "out", mulaw)
    assert "truncated WAV" in r.failed[0][1] and not (tmp_path / "out").exists()


def test_complete_and_streamed_wavs_still_load(tmp_path):
    p = _wav(tmp_path / "ok.wav", seconds=0.1)
    assert load_audio(p)[0].shape == (1, 1600)
    data = bytearray(p.read_bytes())
    data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # data size unknown (a streaming writer's header)
    p.write_bytes(bytes(data))
    assert load_audio(p)[0].shape[-1] == 1600


def test_m4a_is_named_as_unsupported(tmp_path, mulaw):
    d = tmp_path / "in"
    d.mkdir()
    (d / "song.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + os.urandom(100))
    _wav(d / "ok.wav")
    with pytest.raises(AudioError, match=r"song\.m4a: unsupported audio format \.m4a"):
        load_audio(d / "song.m4a")
    r = _encode([d], tmp_path / "out", mulaw)  # reported, not silently left out of a directory
    assert [p.name for p in r.written] == ["ok.stok"] and "unsupported audio format .m4a" in r.failed[0][1]


def _mount_tmpfs(path, options):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
    return path


@pytest.fixture
def small_disk(tmp_path):
    d = _mount_tmpfs(tmp_path / "small", "size=64k")
    yield d
    subprocess.run(["umount", str(d)], check=False)


@pytest.fixture
def read_only_dir(tmp_path):
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    d = _mount_tmpfs(tmp_path / "ro", "ro,size=64k")
    yield d
    subprocess.run(["umount", str(d)], check=False)


def test_full_disk_names_the_file_and_leaves_nothing(tmp_path, small_disk, mulaw):
    _wav(tmp_path / "big.wav", seconds=3.0)  # 48,000 int16 codes: 96 KB > 64 KB
    r = _encode([tmp_path / "big.wav"], small_disk, mulaw)
    assert len(r.failed) == 1
    msg = r.failed[0][1]
    assert msg.startswith(str(small_disk / "big.stok")) and "No space left on device" in msg, msg
    assert list(small_disk.iterdir()) == []
    with pytest.raises(AudioError, match=r"big\.wav: cannot write \(no space left on device"):
        save_audio(small_disk / "big.wav", torch.zeros(1, 48000), 16000)
    assert list(small_disk.iterdir()) == []


def test_unwritable_output_names_the_file_and_cause(tmp_path, read_only_dir, mulaw):
    _wav(tmp_path / "a.wav")
    r = _encode([tmp_path / "a.wav"], read_only_dir / "sub", mulaw)
    msg = r.failed[0][1]
    assert str(read_only_dir / "sub" / "a.stok") in msg and ("Read-only" in msg or "Permission" in msg), msg
    with pytest.raises(AudioError, match=r"x\.wav: cannot write \((Read-only|read-only|Permission|permission)"):
        save_audio(read_only_dir / "x.wav", torch.zeros(1, 100), 16000)
    assert list(read_only_dir.iterdir()) == []


# ---------------------------------------------------------------- 6. decode restores the source format
def test_decode_can_restore_source_rate_and_channels(tmp_path, mulaw):
    t = np.arange(5512) / 22050
    x = np.stack([0.3 * np.sin(2 * np.pi * 300 * t), 0.2 * np.sin(2 * np.pi * 500 * t)], 1)
    sf.write(str(tmp_path / "s.wav"), x.astype(np.float32), 22050)  # band-limited: survives 16 kHz
    _encode([tmp_path / "s.wav"], tmp_path / "s.stok", mulaw)
    meta = read_codes_metadata(tmp_path / "s.stok")
    assert (meta["source_sample_rate"], meta["source_channels"], meta["source_frames"]) == (22050, 2, 5512)
    decode_files([tmp_path / "s.stok"], tmp_path / "default.wav", progress=False)
    assert audio_info(tmp_path / "default.wav")[1:] == (16000, 1)  # default unchanged
    decode_files([tmp_path / "s.stok"], tmp_path / "orig.wav", progress=False, match_source=True)
    assert audio_info(tmp_path / "orig.wav") == (5512, 22050, 2)
    y, _ = sf.read(str(tmp_path / "orig.wav"))
    x, _ = sf.read(str(tmp_path / "s.wav"))
    assert np.abs(y - x.mean(1, keepdims=True)).max() < 0.05  # mono model: both channels the mix
    # a file without the record (older speechtok) says so
    _rewrite(tmp_path / "s.stok", {"source_sample_rate": None, "source_channels": None, "source_frames": None})
    r = decode_files([tmp_path / "s.stok"], tmp_path / "old.wav", progress=False, match_source=True)
    assert "s.stok: records no source sample rate" in r.failed[0][1] and not (tmp_path / "old.wav").exists()
