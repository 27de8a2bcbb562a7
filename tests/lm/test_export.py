"""speechtok.lm.export / ``speechtok export``: every format round-trips to the exact codes."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from speechtok.codes import Codes
from speechtok.codesfile import save_codes
from speechtok.lm import LMTokens, TokenLayout
from speechtok.lm.export import (EXPORT_FILE, ExportError, ExportUsageError, TokenStream, export, read_export,
                                 read_export_layout, read_parquet_meta, read_units_text)
from speechtok.shards import SHARDS_FORMAT, SHARDS_FORMAT_VERSION, EncodedItem, write_shard

SIZES = (50, 40, 30)
LAYOUTS = [dict(), dict(add_bos=True, add_eos=True, offset=7), dict(pattern="delay"),
           dict(pattern="delay", add_eos=True, offset=3), dict(pattern="delay", flat=False)]


def make_shards(root: Path, n: int, sizes=SIZES, T=(0, 12), per_shard=7, model_id="toy@1", seed=0,
                durations=False, frame_rate=25.0, sample_rate=16000) -> list[EncodedItem]:
    """A shard directory like `speechtok preprocess` writes, of ``n`` random items (empty ones included)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        t = int(torch.randint(T[0], T[1] + 1, (1,), generator=g))
        codes = torch.stack([torch.randint(0, s, (t,), generator=g) for s in sizes])
        d = torch.randint(1, 4, (t,), generator=g) if durations else None
        frames = int(d.sum()) if durations else t
        meta = {"id": f"spk{i % 3}/u{i:04d}", "path": f"/nowhere/u{i}.wav", "text": f"text {i}" if i % 2 else None,
                "speaker": f"spk{i % 3}", "start": 0.0, "duration": frames / frame_rate}
        items.append(EncodedItem(meta=meta, codes=codes, audio_length=round(frames * sample_rate / frame_rate),
                                 durations=d))
    shards = [items[a:a + per_shard] for a in range(0, n, per_shard)] or [[]]
    for k, shard in enumerate(shards):
        write_shard(root, k, shard, [], model_id, sizes)
    job = {"format": SHARDS_FORMAT, "format_version": SHARDS_FORMAT_VERSION, "model_id": model_id,
           "num_shards": len(shards), "tokenizer": {"codebook_sizes": list(sizes), "frame_rate": frame_rate,
                                                    "sample_rate": sample_rate, "n_semantic": 1, "channels": 1}}
    (root / "job.json").write_text(json.dumps(job))
    return items


def decode_row(layout: TokenLayout, ids) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]
    return layout.decode(LMTokens(t, torch.tensor([t.shape[-1]]))).codes[0]


def no_partial_output(out: Path) -> bool:
    return not out.exists() or not any(p.name == EXPORT_FILE or p.suffix == ".parquet" or p.name.startswith(".export")
                                       for p in out.iterdir())


# ----------------------------------------------------------------------------- parquet
@pytest.mark.parametrize("opts", LAYOUTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "flatten")
def test_parquet_round_trip(tmp_path, opts):
    import pyarrow.parquet as pq

    items = make_shards(tmp_path / "src", 30, durations=True)
    res = export(tmp_path / "src", tmp_path / "out", "parquet", layout=opts, rows_per_file=12, row_group_rows=5)
    assert res.files == tuple(f"data/part-0000{i}.parquet" for i in range(3)) and res.num_utterances == 30
    want = TokenLayout(codebook_sizes=SIZES, model_id="toy@1", frame_rate=25.0, sample_rate=16000, n_semantic=1,
                       **opts)
    rows, tokens = [], 0
    for f, groups in zip(res.files, (3, 3, 2)):  # 12 rows per file in groups of 5: 5+5+2, 5+5+2, 5+1
        meta = read_parquet_meta(tmp_path / "out" / f)
        assert meta["model_id"] == "toy@1" and meta["codebook_sizes"] == list(SIZES) and meta["frame_rate"] == 25.0
        layout = read_export_layout(tmp_path / "out" / f)  # from the file alone
        assert layout == want
        assert pq.ParquetFile(tmp_path / "out" / f).metadata.num_row_groups == groups
        rows += pq.read_table(tmp_path / "out" / f).to_pylist()
    assert read_export_layout(tmp_path / "out") == want  # and from export.json
    assert [r["id"] for r in rows] == [it.meta["id"] for it in items]
    for r, it in zip(rows, items):
        assert torch.equal(decode_row(want, r["input_ids"]), it.codes), r["id"]
        assert torch.equal(torch.tensor(r["codes"], dtype=torch.long).reshape(len(SIZES), -1), it.codes)
        assert r["durations"] == it.durations.tolist() and r["num_frames"] == it.codes.shape[1]
        assert r["num_tokens"] == want.frame_tokens(it.codes.shape[1]) == np.asarray(r["input_ids"]).shape[-1]
        assert (r["text"], r["speaker"]) == (it.meta["text"], it.meta["speaker"])
        assert r["seconds"] == pytest.approx(it.audio_length / 16000)
        tokens += r["num_tokens"]
    assert res.num_tokens == tokens and read_export(tmp_path / "out")["counts"]["tokens"] == tokens


def test_parquet_loads_with_datasets_and_columns(tmp_path):
    import datasets
    import pyarrow.parquet as pq

    items = make_shards(tmp_path / "src", 20)
    res = export(tmp_path / "src", tmp_path / "out", "parquet", layout={"add_eos": True}, rows_per_file=8)
    files = [str(tmp_path / "out" / f) for f in res.files]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    whole = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "data"), split="train",
                                  cache_dir=str(tmp_path / "hf2"))
    table = pq.read_table(tmp_path / "out" / "data")  # the folder as one dataset
    assert len(ds) == len(whole) == table.num_rows == 20 and len(files) == 3
    layout = read_export_layout(files[0])
    for row, it in zip(ds, items):
        assert torch.equal(decode_row(layout, row["input_ids"]), it.codes)
        assert row["durations"] is None and row["text"] == it.meta["text"]
    assert table.column("id").to_pylist() == list(ds["id"]) == list(whole["id"]) == [it.meta["id"] for it in items]
    only = export(tmp_path / "src", tmp_path / "ids", "parquet", columns="ids")
    names = pq.read_schema(tmp_path / "ids" / only.files[0]).names
    assert "input_ids" in names and "codes" not in names


# ----------------------------------------------------------------------------- token stream
def parse_megatron_idx(path: Path) -> dict:
    """Megatron-LM's _IndexReader, written out from its spec (independent of speechtok's reader)."""
    b = path.read_bytes()
    assert b[:9] == b"MMIDIDX\x00\x00"
    version, code, n, d = struct.unpack("<QBQQ", b[9:34])
    sizes = np.frombuffer(b, np.int32, n, 34)
    pointers = np.frombuffer(b, np.int64, n, 34 + 4 * n)
    docs = np.frombuffer(b, np.int64, d, 34 + 12 * n)
    assert len(b) == 34 + 12 * n + 8 * d
    return dict(version=version, code=code, sizes=sizes, pointers=pointers, docs=docs)


@pytest.mark.parametrize("opts", [dict(), dict(add_bos=True, offset=70_000), dict(pattern="delay", add_bos=True)])
def test_token_stream_round_trip_and_megatron_index(tmp_path, opts):
    items = make_shards(tmp_path / "src", 25)
    res = export(tmp_path / "src", tmp_path / "out", "tokens", layout=opts)
    layout = read_export_layout(tmp_path / "out")
    assert layout.add_eos  # the token stream's default: documents end with eos
    dtype = np.uint16 if layout.vocab_size <= 65536 else np.int32
    flat = np.memmap(tmp_path / "out" / "tokens.bin", dtype=dtype, mode="r")  # the nanoGPT way
    idx = parse_megatron_idx(tmp_path / "out" / "tokens.idx")
    assert idx["version"] == 1 and idx["code"] == (8 if dtype == np.uint16 else 4)
    assert idx["docs"].tolist() == list(range(26))
    assert idx["pointers"].tolist() == ((np.cumsum(idx["sizes"]) - idx["sizes"]) * np.dtype(dtype).itemsize).tolist()
    assert len(flat) == int(idx["sizes"].sum()) == res.num_tokens
    stream = TokenStream(tmp_path / "out")
    assert len(stream) == 25 and stream.layout == layout and stream.meta["model_id"] == "toy@1"
    eos = layout.special_id("eos")
    for i, it in enumerate(items):
        p, n = int(idx["pointers"][i]) // np.dtype(dtype).itemsize, int(idx["sizes"][i])
        assert np.array_equal(flat[p:p + n], stream[i]) and stream[i][-1] == eos
        assert torch.equal(decode_row(layout, flat[p:p + n]), it.codes)
        assert torch.equal(stream.codes(i).codes[0], it.codes) and stream.codes(i).model_id == "toy@1"
    docs = [json.loads(line) for line in (tmp_path / "out" / "documents.jsonl").read_text().splitlines()]
    assert [d["id"] for d in docs] == [it.meta["id"] for it in items]


def test_token_stream_refuses_parallel_and_corrupt_index(tmp_path):
    make_shards(tmp_path / "src", 5)
    with pytest.raises(ExportUsageError, match="flat"):
        export(tmp_path / "src", tmp_path / "out", "tokens", layout=dict(pattern="delay", flat=False))
    assert no_partial_output(tmp_path / "out")
    export(tmp_path / "src", tmp_path / "out", "tokens")
    idx = tmp_path / "out" / "tokens.idx"
    idx.write_bytes(idx.read_bytes()[:-8])
    with pytest.raises(ExportError, match="tokens.idx: truncated"):
        TokenStream(tmp_path / "out")


# ----------------------------------------------------------------------------- units text, lhotse
def test_units_text_round_trip(tmp_path):
    items = make_shards(tmp_path / "src", 15)
    res = export(tmp_path / "src", tmp_path / "u2", "units-text", codebook=2)
    lines = list(read_units_text(tmp_path / "u2" / "units.txt"))
    assert [i for i, _ in lines] == [it.meta["id"] for it in items]
    assert all(np.array_equal(u, it.codes[2].numpy()) for (_, u), it in zip(lines, items))
    assert read_export(tmp_path / "u2")["settings"]["codebook"] == 2 and res.layout is None
    res = export(tmp_path / "src", tmp_path / "u0", "units-text")
    first = (tmp_path / "u0" / "units.txt").read_text().splitlines()[0]
    assert first == f"{items[0].meta['id']}|" + " ".join(map(str, items[0].codes[0].tolist()))
    assert any("codebook 0 of 3" in n for n in res.notes)
    with pytest.raises(ExportError, match="no token layout"):
        read_export_layout(tmp_path / "u0")
    with pytest.raises(ExportUsageError, match="codebook=3"):
        export(tmp_path / "src", tmp_path / "u3", "units-text", codebook=3)
    with pytest.raises(ExportUsageError, match="no layout"):
        export(tmp_path / "src", tmp_path / "u4", "units-text", layout={"add_eos": True})


@pytest.mark.parametrize("durations", [False, True])
def test_lhotse_round_trip(tmp_path, durations):
    import lhotse

    items = make_shards(tmp_path / "src", 12, durations=durations)
    res = export(tmp_path / "src", tmp_path / "out", "lhotse")
    assert any("12 cuts have no recording" in n for n in res.notes)
    cuts = list(lhotse.load_manifest(tmp_path / "out" / "cuts.jsonl.gz"))
    assert [c.id for c in cuts] == [it.meta["id"] for it in items]
    for c, it in zip(cuts, items):
        assert np.array_equal(c.load_codes().T, it.codes.numpy()), c.id
        assert np.array_equal(c.custom["codes"].load().T, it.codes.numpy())
        assert c.custom["speechtok_model"] == "toy@1" and not c.has_recording
        (sup,) = c.supervisions
        assert (sup.text, sup.speaker) == (it.meta["text"], it.meta["speaker"])
        if durations:
            assert np.array_equal(c.load_durations(), it.durations.numpy())
        else:
            assert c.custom["codes"].frame_shift == pytest.approx(1 / 25.0)


def _mulaw_shards(tmp_path: Path, make_tone) -> Path:
    """Real preprocessing (mulaw-16k) of a manifest with text/speaker and a lhotse segment of a file."""
    import soundfile as sf

    from speechtok.preprocessing import PreprocessConfig, preprocess

    (tmp_path / "a").mkdir()
    for name, secs in (("x", 0.05), ("y", 0.08)):
        sf.write(str(tmp_path / "a" / f"{name}.wav"), make_tone(secs, 16000).T.numpy(), 16000)
    def src(name):
        return {"type": "file", "channels": [0], "source": str(tmp_path / "a" / f"{name}.wav")}

    cuts = [{"id": "x1", "start": 0.0, "duration": 0.05, "channel": 0,
             "recording": {"id": "rx", "sources": [src("x")],
                           "sampling_rate": 16000, "num_samples": 800, "duration": 0.05},
             "supervisions": [{"id": "s", "text": "hello", "speaker": "ann"}]},
            {"id": "y1", "start": 0.02, "duration": 0.04, "channel": 0,
             "recording": {"id": "ry", "sources": [src("y")],
                           "sampling_rate": 16000, "num_samples": 1280, "duration": 0.08},
             "supervisions": [{"id": "s", "text": "seg", "speaker": "bob"}]}]
    (tmp_path / "cuts.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cuts))
    preprocess(tmp_path / "cuts.jsonl", tmp_path / "shards", "mulaw-16k", progress=False,
               config=PreprocessConfig(num_workers=1))
    return tmp_path / "shards"


def test_lhotse_from_real_shards_keeps_recording_and_segment(tmp_path, make_tone):
    import lhotse

    from speechtok.shards import ShardSet

    src = _mulaw_shards(tmp_path, make_tone)
    ref = {it.id: it.codes for it in ShardSet(src).items()}
    res = export(src, tmp_path / "out", "lhotse")
    assert res.notes == () and res.model_id.startswith("mulaw-16k@")
    cuts = {c.id: c for c in lhotse.load_manifest(tmp_path / "out" / "cuts.jsonl.gz")}
    assert set(cuts) == set(ref) == {"x1", "y1"}
    y = cuts["y1"]
    assert y.has_recording and y.recording.sources[0].source == str(tmp_path / "a/y.wav")
    assert (y.start, y.duration) == pytest.approx((0.02, 0.04)) and y.supervisions[0].text == "seg"
    assert y.load_audio().shape == (1, 640)  # lhotse reads the segment of the source file
    for cid, c in cuts.items():
        assert np.array_equal(c.load_codes().T, ref[cid].numpy())
    parquet = export(src, tmp_path / "pq", "parquet")
    import pyarrow.parquet as pq

    rows = {r["id"]: r for r in pq.read_table(tmp_path / "pq" / parquet.files[0]).to_pylist()}
    assert (rows["x1"]["text"], rows["x1"]["speaker"]) == ("hello", "ann")
    assert rows["x1"]["audio_path"] == str(tmp_path / "a/x.wav")


# ----------------------------------------------------------------------------- sources
def _codes(T: int, B: int = 1, model_id="toy@1", sizes=SIZES, seed=0) -> Codes:
    g = torch.Generator().manual_seed(seed)
    raw = torch.stack([torch.randint(0, s, (B, T), generator=g) for s in sizes], 1)
    return Codes.from_tensor(raw, torch.full((B,), T) - torch.arange(B), frame_rate=25.0, codebook_sizes=sizes,
                             sample_rate=16000, model_id=model_id, n_semantic=1)


def test_stok_sources_ids_and_round_trip(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "c" / "sub").mkdir(parents=True)
    a, b, batch = _codes(5, seed=1), _codes(7, seed=2), _codes(6, B=2, seed=3)
    save_codes(tmp_path / "c" / "a.stok", a, source="/x/a.wav")
    save_codes(tmp_path / "c" / "sub" / "b.stok", b)
    save_codes(tmp_path / "c" / "sub" / ".b.stok.tmp-123", b)  # a leftover temp file: never a source
    save_codes(tmp_path / "two.stok", batch)
    res = export([tmp_path / "c", tmp_path / "two.stok"], tmp_path / "out", "parquet", layout={"pattern": "delay"})
    rows = pq.read_table(tmp_path / "out" / res.files[0]).to_pylist()
    assert [r["id"] for r in rows] == ["a", "sub/b", "two:0", "two:1"]
    assert rows[0]["audio_path"] == "/x/a.wav" and rows[1]["audio_path"] is None
    want = [a.codes[0], b.codes[0]] + [c.codes[0] for c in batch.unbatch()]
    layout = read_export_layout(tmp_path / "out")
    assert all(torch.equal(decode_row(layout, r["input_ids"]), w) for r, w in zip(rows, want))


def test_mixed_models_and_codebooks(tmp_path):
    save_codes(tmp_path / "a.stok", _codes(5))
    save_codes(tmp_path / "b.stok", _codes(5, model_id="other@2"))
    with pytest.raises(ExportError, match=r"b\.stok: model_id 'other@2' differs from 'toy@1' of .*a\.stok"):
        export([tmp_path / "a.stok", tmp_path / "b.stok"], tmp_path / "out", "parquet")
    assert no_partial_output(tmp_path / "out")
    save_codes(tmp_path / "k2.stok", _codes(5).take_codebooks(2))
    with pytest.raises(ExportError, match=r"k2\.stok: codebook_sizes"):
        export([tmp_path / "a.stok", tmp_path / "k2.stok"], tmp_path / "out", "parquet")
    res = export([tmp_path / "a.stok", tmp_path / "k2.stok"], tmp_path / "out", "tokens", codebooks=2)
    assert res.layout.codebook_sizes == SIZES[:2]
    assert torch.equal(TokenStream(tmp_path / "out").codes(0).codes[0], _codes(5).codes[0, :2])
    with pytest.raises(ExportUsageError, match="layout is for model 'toy@1'"):
        export(tmp_path / "b.stok", tmp_path / "o2", "parquet", layout=res.layout)


def test_corrupt_and_foreign_sources_name_the_file(tmp_path):
    (tmp_path / "bad.stok").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ExportError, match=r"bad\.stok: not a speechtok codes file"):
        export(tmp_path / "bad.stok", tmp_path / "out", "parquet")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ExportError, match=r"notes\.txt: not a \.stok"):
        export(tmp_path / "notes.txt", tmp_path / "out", "parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="empty: neither a shard directory"):
        export(tmp_path / "empty", tmp_path / "out", "parquet")
    make_shards(tmp_path / "src", 20)  # shards 0..2; the second one is corrupted
    shard = tmp_path / "src" / "shards" / "shard-000001.safetensors"
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(ExportError, match=r"shard-000001\.safetensors"):
        export(tmp_path / "src", tmp_path / "out", "parquet", row_group_rows=2)
    assert no_partial_output(tmp_path / "out")  # shard 0 was written, then all of it removed
    (tmp_path / "src" / "job.json").write_text('{"format": "something.else"}')
    with pytest.raises(ExportError, match=r"job\.json: not a speechtok shards job"):
        export(tmp_path / "src", tmp_path / "out", "parquet")


def test_rerun_is_a_noop_other_settings_need_force(tmp_path):
    make_shards(tmp_path / "src", 10)
    out = tmp_path / "out"
    export(tmp_path / "src", out, "parquet")
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = export(tmp_path / "src", out, "parquet")
    assert again.skipped and again.num_utterances == 10
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    with pytest.raises(ExportUsageError, match="other layout"):
        export(tmp_path / "src", out, "parquet", layout={"add_eos": True})
    with pytest.raises(ExportUsageError, match="other export_format|other .*format"):
        export(tmp_path / "src", out, "units-text")
    res = export(tmp_path / "src", out, "units-text", force=True)
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_FILE, "units.txt"]  # the parquet export is gone
    assert read_export(out)["export_format"] == "units-text" and not res.skipped
    # a source that changed since: not the same export any more
    make_shards(tmp_path / "src", 11)
    with pytest.raises(ExportUsageError, match="sources_fingerprint"):
        export(tmp_path / "src", out, "units-text")
    # an export that died while moving its files into place (pending list, temp folder, no export.json)
    # is redone; without the pending list the same file is not provably an export's: refused
    (out / EXPORT_FILE).unlink()
    (out / ".export.tmp-abc").mkdir()
    with pytest.raises(ExportUsageError, match="not empty and not a speechtok export .holds units.txt"):
        export(tmp_path / "src", out, "units-text")
    (out / ".export.tmp-pending.json").write_text('["units.txt"]')
    export(tmp_path / "src", out, "units-text")
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_FILE, "units.txt"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(ExportUsageError, match="thesis.tex"):
        export(tmp_path / "src", tmp_path / "mine", "tokens")
    export(tmp_path / "src", tmp_path / "mine", "tokens", force=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
    (tmp_path / "mine" / "units.txt").write_text("someone else's")  # force writes beside files, never over them
    with pytest.raises(ExportUsageError, match="units.txt: exists and is not part of an export"):
        export(tmp_path / "src", tmp_path / "mine", "units-text", force=True)
    assert (tmp_path / "mine" / "units.txt").read_text() == "someone else's"
    assert read_export(tmp_path / "mine")["export_format"] == "tokens"  # refused before anything was touched
    with pytest.raises(ExportUsageError, match="is one of the sources"):
        export(tmp_path / "src", tmp_path / "src", "tokens", force=True)


def test_failed_export_keeps_the_previous_one_and_a_crash_while_committing_is_cleaned(tmp_path, monkeypatch):
    import speechtok.lm.export as ex

    make_shards(tmp_path / "src", 10)
    make_shards(tmp_path / "bad", 20)
    out = tmp_path / "out"
    export(tmp_path / "src", out, "parquet")
    before = sorted(p.name for p in out.iterdir())
    shard = tmp_path / "bad" / "shards" / "shard-000002.safetensors"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(ExportError, match="shard-000002"):
        export(tmp_path / "bad", out, "tokens", force=True)
    assert sorted(p.name for p in out.iterdir()) == before and read_export(out)["export_format"] == "parquet"
    calls, real_replace = [], ex.os.replace

    def dying_replace(a, b):  # the process dies after moving the first file into place
        calls.append(b)
        if len(calls) > 2:  # 1: the pending list, 2: tokens.bin, 3: tokens.idx dies
            raise OSError(28, "No space left on device", str(b))
        return real_replace(a, b)

    monkeypatch.setattr(ex.os, "replace", dying_replace)
    with pytest.raises(ExportError, match="No space left"):
        export(tmp_path / "src", out, "tokens", force=True)
    monkeypatch.undo()
    assert not (out / EXPORT_FILE).exists() and (out / "tokens.bin").exists()  # incomplete: no export.json
    res = export(tmp_path / "src", out, "tokens")  # no force needed: the pending list names what is ours
    assert sorted(p.name for p in out.iterdir()) == sorted([EXPORT_FILE, *res.files]) and len(TokenStream(out)) == 10


def test_empty_source_and_layout_objects(tmp_path):
    import pyarrow.parquet as pq

    make_shards(tmp_path / "none", 0)
    for fmt in ("parquet", "tokens", "units-text", "lhotse"):
        res = export(tmp_path / "none", tmp_path / fmt, fmt)
        assert res.num_utterances == 0 and read_export(tmp_path / fmt)["counts"]["utterances"] == 0
    assert pq.read_table(tmp_path / "parquet" / "data").num_rows == 0 and len(TokenStream(tmp_path / "tokens")) == 0
    items = make_shards(tmp_path / "src", 6)
    two = TokenLayout(codebook_sizes=SIZES[:2], pattern="delay", model_id="toy@1", frame_rate=25.0,
                      sample_rate=16000)
    res = export(tmp_path / "src", tmp_path / "two", "parquet", layout=two)
    rows = pq.read_table(tmp_path / "two" / res.files[0]).to_pylist()
    assert read_export_layout(tmp_path / "two") == two and len(rows[1]["codes"]) == 2
    assert torch.equal(decode_row(two, rows[1]["input_ids"]), items[1].codes[:2])
    with pytest.raises(ExportUsageError, match="codebooks=3: the layout given has 2"):
        export(tmp_path / "src", tmp_path / "x", "parquet", layout=two, codebooks=3)


def test_lhotse_refuses_duplicate_ids(tmp_path):
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        save_codes(tmp_path / d / "same.stok", _codes(4))
    with pytest.raises(ExportError, match=r"d2/same\.stok: item id 'same' occurs twice"):
        export([tmp_path / "d1", tmp_path / "d2"], tmp_path / "out", "lhotse")
    assert no_partial_output(tmp_path / "out") and not (tmp_path / "out" / "codes").exists()


# ----------------------------------------------------------------------------- memory
CHILD = textwrap.dedent("""
    import json, resource, sys
    from speechtok.lm.export import export
    tiny, small, large, out = sys.argv[1:5]
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    for fmt in ("parquet", "tokens"):  # warm up: every lazy import and allocator pool
        export(tiny, out + "/warm-" + fmt, fmt, **({"row_group_rows": 20} if fmt == "parquet" else {}))
    res = {}
    for size, src in (("small", small), ("large", large)):
        r = export(src, out + "/p-" + size, "parquet", row_group_rows=20)
        res[size + "_parquet"] = peak()
        t = export(src, out + "/t-" + size, "tokens")
        res[size + "_tokens"] = peak()
        res[size + "_tokens_count"] = t.num_tokens
    print(json.dumps(res))
""")


def test_memory_stays_flat_for_parquet_and_tokens(tmp_path):
    K, T, sizes = 4, 3000, (1024,) * 4
    make_shards(tmp_path / "tiny", 10, sizes=sizes, T=(T, T), per_shard=20)
    make_shards(tmp_path / "small", 80, sizes=sizes, T=(T, T), per_shard=20)
    make_shards(tmp_path / "large", 800, sizes=sizes, T=(T, T), per_shard=20)
    large_mib = 800 * K * T * 8 / 2**20  # the large set's codes as int64: ~73 MiB, x2 with its LM ids
    r = subprocess.run([sys.executable, "-P", "-c", CHILD, *(str(tmp_path / n) for n in ("tiny", "small", "large")),
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["large_tokens_count"] == 10 * m["small_tokens_count"] == 800 * K * T + 800
    # 10x the data: the peak may not follow it (holding the set would add >= large_mib, 146 MiB with ids)
    assert m["large_parquet"] - m["small_tokens"] < large_mib / 4, m
    assert m["large_tokens"] - m["small_tokens"] < large_mib / 4, m


# ----------------------------------------------------------------------------- CLI
def cli(*args):
    from click.testing import CliRunner

    from speechtok.cli.main import main

    return CliRunner().invoke(main, ["export", *map(str, args)], catch_exceptions=False)


def test_cli_help_and_formats():
    from speechtok.cli.export import FORMATS as CLI_FORMATS
    from speechtok.lm.export import FORMATS

    assert CLI_FORMATS == FORMATS
    r = cli("--help")
    assert r.exit_code == 0
    for word in ("parquet", "tokens.bin", "tokens.idx", "Megatron", "nanoGPT", "units.txt", "GSLM", "cuts.jsonl.gz",
                 "datasets", "--pattern", "--parallel", "--offset", "--bos", "--eos", "--codebooks", "--codebook",
                 "--rows-per-file", "--force"):
        assert word in r.output, word


def test_cli_one_run_per_format(tmp_path):
    import lhotse
    import pyarrow.parquet as pq

    items = make_shards(tmp_path / "src", 9)
    r = cli(tmp_path / "src", "-o", tmp_path / "p", "--format", "parquet", "--pattern", "delay", "--parallel",
            "--rows-per-file", 4)
    assert r.exit_code == 0, r.output
    assert "exported 9 utterances" in r.output and len(list((tmp_path / "p" / "data").glob("part-*.parquet"))) == 3
    layout = read_export_layout(tmp_path / "p")
    assert (layout.pattern, layout.flat) == ("delay", False)
    row = pq.read_table(tmp_path / "p" / "data" / "part-00000.parquet").to_pylist()[1]
    assert torch.equal(decode_row(layout, row["input_ids"]), items[1].codes)
    r = cli(tmp_path / "src", "-o", tmp_path / "t", "--format", "tokens", "--bos", "--no-eos", "--offset", 10,
            "--codebooks", 2)
    assert r.exit_code == 0, r.output
    s = TokenStream(tmp_path / "t")
    assert (s.layout.add_bos, s.layout.add_eos, s.layout.offset, s.layout.num_codebooks) == (True, False, 10, 2)
    assert torch.equal(s.codes(3).codes[0], items[3].codes[:2])
    r = cli(tmp_path / "src", "-o", tmp_path / "u", "--format", "units-text", "--codebook", 1)
    assert r.exit_code == 0 and dict(read_units_text(tmp_path / "u" / "units.txt"))[items[4].meta["id"]].tolist() == \
        items[4].codes[1].tolist()
    r = cli(tmp_path / "src", "-o", tmp_path / "l", "--format", "lhotse")
    assert r.exit_code == 0 and "note: 9 cuts have no recording" in r.output
    assert len(lhotse.load_manifest(tmp_path / "l" / "cuts.jsonl.gz")) == 9
    r = cli(tmp_path / "src", "-o", tmp_path / "l", "--format", "lhotse")
    assert r.exit_code == 0 and "nothing to do" in r.output


def test_cli_errors_are_one_line(tmp_path):
    make_shards(tmp_path / "src", 4)
    (tmp_path / "bad.stok").write_bytes(b"garbage")
    r = cli(tmp_path / "bad.stok", "-o", tmp_path / "out", "--format", "parquet")
    assert r.exit_code == 1 and r.output.startswith(f"error: {tmp_path / 'bad.stok'}: ")
    assert r.output.count("\n") == 1 and no_partial_output(tmp_path / "out")
    for args, what in ((("--format", "parquet", "--codebook", 1), "--codebook"),
                       (("--format", "units-text", "--pattern", "delay"), "--pattern"),
                       (("--format", "tokens", "--parallel"), "flat"),
                       (("--format", "tokens", "--rows-per-file", 3), "--rows-per-file"),
                       (("--format", "parquet", "--codebooks", 0), "--codebooks")):
        r = cli(tmp_path / "src", "-o", tmp_path / "out", *args)
        assert r.exit_code == 2 and r.output.startswith("error: ") and what in r.output, (args, r.output)
        assert r.output.count("\n") == 1 and no_partial_output(tmp_path / "out")
    cli(tmp_path / "src", "-o", tmp_path / "out", "--format", "parquet")
    r = cli(tmp_path / "src", "-o", tmp_path / "out", "--format", "parquet", "--eos")
    assert r.exit_code == 2
    assert r.output.startswith(f"error: {tmp_path / 'out' / EXPORT_FILE}: holds an export with other layout")


def test_import_stays_light():
    code = ("import sys, speechtok.lm.export, speechtok.cli.export; "
            "print([m for m in ('pyarrow', 'lhotse', 'datasets') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]
