import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtok.atomic import atomic_path
from speechtok.audio import AudioError, load_audio, save_audio


def test_load_resamples_and_mixes(tmp_path):
    x = np.stack([np.sin(np.arange(8000) / 10), np.zeros(8000)], 1).astype("float32")
    sf.write(str(tmp_path / "s.wav"), x, 8000)
    wav, sr = load_audio(tmp_path / "s.wav")
    assert sr == 8000 and wav.shape == (1, 8000)
    assert torch.allclose(wav[0], torch.from_numpy(x).mean(1), atol=1e-4)
    wav, sr = load_audio(tmp_path / "s.wav", sample_rate=16000, mono=False)
    assert sr == 16000 and wav.shape == (2, 16000)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_formats_round_trip(tmp_path, ext):
    t = torch.arange(16000) / 16000
    x = (0.5 * torch.sin(2 * math.pi * 440 * t))[None]
    p = save_audio(tmp_path / f"x.{ext}", x, 16000)
    y, sr = load_audio(p)
    assert sr == 16000 and abs(y.shape[-1] - 16000) < 2000  # lossy codecs may pad a little
    if ext in ("wav", "flac"):
        assert torch.allclose(y, x, atol=1e-4)


def test_errors_name_file_and_problem(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: empty file"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(200))
    with pytest.raises(AudioError, match=r"corrupt\.flac: unreadable or corrupt"):
        load_audio(tmp_path / "corrupt.flac")
    sf.write(str(tmp_path / "zero.wav"), np.zeros((0, 1), "float32"), 16000)
    with pytest.raises(AudioError, match=r"zero\.wav: empty audio \(0 samples\)"):
        load_audio(tmp_path / "zero.wav")
    x = np.zeros(100, "float32")
    x[5] = np.nan
    sf.write(str(tmp_path / "nan.wav"), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: 1 NaN/inf samples"):
        load_audio(tmp_path / "nan.wav")
    sf.write(str(tmp_path / "silent.wav"), np.zeros(16000, "float32"), 16000)
    with pytest.raises(AudioError, match=r"silent\.wav: zero length after trimming"):
        load_audio(tmp_path / "silent.wav", trim_db=40)
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")


def test_trim_keeps_the_loud_part(tmp_path):
    x = np.zeros(16000, "float32")
    x[6000:9000] = 0.5 * np.sin(np.arange(3000) / 5)
    sf.write(str(tmp_path / "t.wav"), x, 16000)
    y, _ = load_audio(tmp_path / "t.wav", trim_db=30)
    assert 3000 <= y.shape[-1] <= 3000 + 2 * 320


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_output_has_usual_permissions(tmp_path):
    with atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o666 & ~mask
    # also for writers that recreate the file (safetensors writes codes files that way)
    import torch

    from speechtok.codes import Codes
    from speechtok.codesfile import save_codes

    codes = Codes.from_tensor(torch.zeros(1, 1, 3, dtype=torch.long), torch.tensor([3]), frame_rate=50.0,
                              codebook_sizes=(4,), sample_rate=16000, model_id="m@0")
    save_codes(tmp_path / "c.stok", codes)
    assert (tmp_path / "c.stok").stat().st_mode & 0o777 == 0o666 & ~mask


def test_killed_writer_leaves_no_partial_output(tmp_path):
    """A process killed (SIGKILL) in the middle of a write leaves no file at the target path."""
    target = tmp_path / "big.wav"
    code = textwrap.dedent(f"""
        import os, signal, torch
        import soundfile as sf
        from speechtok.atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"RIFF" + b"\\0" * 100000)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path)
    assert r.returncode == -9
    assert not target.exists()
