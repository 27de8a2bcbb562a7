import json

import pytest
import torch

from speechtok import Codes
from speechtok.codesfile import CodesFileError, load_codes, read_codes_metadata, save_codes


def codes(sizes=(2048, 2048), durations=False):
    g = torch.Generator().manual_seed(1)
    raw = torch.stack([torch.randint(0, s, (2, 6), generator=g) for s in sizes], 1)
    d = torch.randint(1, 4, (2, 6), generator=g) if durations else None
    return Codes.from_tensor(raw, torch.tensor([6, 3]), frame_rate=12.5, codebook_sizes=sizes, sample_rate=24000,
                             model_id="mimi@0123456789ab", n_semantic=1, durations=d,
                             audio_lengths=torch.tensor([11520, 5000]))


@pytest.mark.parametrize("sizes, durations", [((2048, 2048), False), ((70000,), True)])
def test_round_trip(tmp_path, sizes, durations):
    c = codes(sizes, durations)
    if durations:
        c = c.with_(durations=c.durations * c.mask())
    p = save_codes(tmp_path / "x.stok", c, source="a.wav")
    back = load_codes(p, expect_model_id="mimi@0123456789ab")
    for f in ("codes", "lengths", "audio_lengths"):
        assert torch.equal(getattr(back, f), getattr(c, f))
    assert (back.durations is None) == (not durations)
    assert (back.frame_rate, back.codebook_sizes, back.sample_rate, back.n_semantic) == (12.5, sizes, 24000, 1)
    meta = read_codes_metadata(p)
    assert meta["source"] == "a.wav" and meta["format_version"] == 1 and meta["lengths"] == [6, 3]


def _rewrite_meta(path, **changes):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["speechtok"])
    meta.update(changes)
    save_file(load_file(str(path)), str(path), metadata={"speechtok": json.dumps(meta)})


def test_future_version_fails_saying_so(tmp_path):
    p = save_codes(tmp_path / "x.stok", codes())
    _rewrite_meta(p, format_version=99, speechtok_version="9.0")
    with pytest.raises(CodesFileError, match="version 99 was written by a newer speechtok"):
        load_codes(p)


def test_other_model_fails_naming_both(tmp_path):
    p = save_codes(tmp_path / "x.stok", codes())
    with pytest.raises(CodesFileError, match="made by model 'mimi@0123456789ab', not 'other@1'"):
        load_codes(p, expect_model_id="other@1")


def test_not_a_codes_file(tmp_path):
    p = tmp_path / "junk.stok"
    p.write_bytes(b"\x00" * 50)
    with pytest.raises(CodesFileError, match="junk.stok: not a speechtok codes file"):
        load_codes(p)
    with pytest.raises(CodesFileError, match="no such codes file"):
        load_codes(tmp_path / "missing.stok")


def test_file_with_out_of_range_codes_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    p = save_codes(tmp_path / "x.stok", codes())
    t = load_file(str(p))
    t["codes"][0, 0, 0] = 3000
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
    save_file(t, str(p), metadata=meta)
    with pytest.raises(CodesFileError, match="x.stok: code 3000"):
        load_codes(p)


def test_invalid_codes_are_not_written(tmp_path):
    c = codes()
    with pytest.raises(Exception):
        save_codes(tmp_path / "x.stok", c.with_(codebook_sizes=(1, 1)))
    assert not list(tmp_path.iterdir())
