"""speechtok.preprocess: shards read back to per-file codes; resume; errors; inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import speechtok
from speechtok.inputs import AudioItem, InputError, read_inputs
from speechtok.preprocessing import PreprocessConfig, plan_shards, preprocess
from speechtok.shards import ShardDataset, ShardError, ShardSet


def make_dataset(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` tiny noisy wav files (50-400 ms, mixed rates, some stereo) + one corrupt file."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sr = (16000, 8000, 22050)[i % 3]
        frames = int(rng.integers(sr // 20, sr * 2 // 5))
        ch = 2 if i % 7 == 0 else 1
        x = (0.2 * rng.standard_normal((frames, ch))).astype("float32")
        sub = root / f"spk{i % 4}"
        sub.mkdir(exist_ok=True)
        sf.write(str(sub / f"utt{i:04d}.wav"), x, sr)
    (root / "spk0" / "broken.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    return root


_RESAMPLERS: dict = {}


def per_file_codes(tok, path: str) -> torch.Tensor:
    """The file encoded alone (resampled like torchaudio.functional.resample, kernel cached per rate)."""
    import torchaudio

    wav, sr = speechtok.load_audio(path)
    if sr != tok.sample_rate:
        key = (sr, tok.sample_rate)
        if key not in _RESAMPLERS:
            _RESAMPLERS[key] = torchaudio.transforms.Resample(sr, tok.sample_rate, dtype=torch.float32)
        wav = _RESAMPLERS[key](wav)
    return tok.encode(wav, sample_rate=tok.sample_rate).codes[0]


def test_shards_equal_per_file_encoding(tmp_path):
    data = make_dataset(tmp_path / "in", 240)
    tok = speechtok.load("mulaw-16k")
    cfg = PreprocessConfig(shard_items=40, batch_seconds=2.0, max_batch_size=16, num_workers=2)
    res = preprocess(data, tmp_path / "out", tok, config=cfg, progress=False)
    assert res.num_items == 241 and res.num_errors == 1 and res.num_shards == 7
    shards = ShardSet(tmp_path / "out", verify=True)
    assert shards.complete and len(shards) == 240
    ids = [it.id for it in shards.items()]
    assert sorted(ids) == sorted(i.id for i in read_inputs(data) if i.id != "spk0/broken")
    for item in shards.items():
        ref = per_file_codes(tok, item.meta["path"])
        assert torch.equal(item.codes, ref), item.id
        codes = shards.to_codes(item).validate()
        assert codes.model_id == tok.model_id
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["spk0/broken"] and "broken.wav" in errors[0]["error"]
    index = [json.loads(line) for line in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    assert len(index) == 240 and {r["model_id"] for r in index} == {tok.model_id}


def test_rerun_resumes_and_never_redoes(tmp_path):
    data = make_dataset(tmp_path / "in", 60)
    out = tmp_path / "out"
    cfg = PreprocessConfig(shard_items=10, num_workers=1)
    first = preprocess(data, out, "mulaw-16k", config=cfg, progress=False)
    shard_files = sorted((out / "shards").glob("*.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in shard_files}
    # lose two shards (as if the job died before committing them), leave a stale temp file
    for n in (2, 5):
        (out / "shards" / f"shard-00000{n}.json").unlink()
    (out / "shards" / ".shard-000002.safetensors.tmp-x").write_bytes(b"partial")
    again = preprocess(data, out, "mulaw-16k", config=cfg, progress=False)
    assert again.shards_done_before == first.num_shards - 2
    for p, t in before.items():
        if p.name not in ("shard-000002.safetensors", "shard-000005.safetensors"):
            assert p.stat().st_mtime_ns == t, f"{p.name} was rewritten"
    assert not list((out / "shards").glob(".shard-*"))
    ids = [it.id for it in ShardSet(out).items()]
    assert len(ids) == len(set(ids)) == 60


def test_other_model_or_inputs_refused(tmp_path):
    data = make_dataset(tmp_path / "in", 6)
    preprocess(data, tmp_path / "out", "mulaw-16k", progress=False)
    with pytest.raises(ShardError, match="num_codebooks"):
        preprocess(data, tmp_path / "out", "mulaw-16k", config=PreprocessConfig(num_codebooks=1), progress=False)
    make_dataset(tmp_path / "in", 8)
    with pytest.raises(ShardError, match="inputs_sha256"):
        preprocess(data, tmp_path / "out", "mulaw-16k", progress=False)


def test_plan_buckets_by_length_and_respects_limits(tmp_path):
    items = [AudioItem(id=f"x{i}", path="/nope", duration=d) for i, d in enumerate([5.0, 1.0, 3.0, 2.0, 4.0, 9.0])]
    plan = plan_shards(items, PreprocessConfig(shard_items=2, shard_seconds=8.0))
    durs = [[it.duration for it in shard] for shard in plan]
    assert durs == [[1.0, 2.0], [3.0, 4.0], [5.0], [9.0]]


def test_manifest_and_lhotse_inputs(tmp_path, sample_path):
    import soundfile as sf

    info = sf.info(str(sample_path))
    man = tmp_path / "m" / "manifest.jsonl"
    man.parent.mkdir()
    rel = Path("../") / "s.flac"
    (tmp_path / "s.flac").write_bytes(sample_path.read_bytes())
    man.write_text(json.dumps({"id": "u1", "audio": str(rel), "text": "hello", "speaker": "lj",
                               "source": "x", "sample_rate": info.samplerate, "duration": 1.0}) + "\n")
    cuts = tmp_path / "cuts.jsonl"
    cuts.write_text(json.dumps({"id": "c1", "start": 0.5, "duration": 0.25, "channel": 0,
                                "recording": {"id": "r", "sources": [{"type": "file", "channels": [0],
                                                                      "source": str(sample_path)}],
                                              "sampling_rate": info.samplerate, "num_samples": info.frames,
                                              "duration": info.duration},
                                "supervisions": [{"id": "s", "text": "seg", "speaker": "lj"}]}) + "\n")
    (m,) = read_inputs(man)
    assert m.path == str((tmp_path / "s.flac").resolve()) and m.text == "hello"
    (c,) = read_inputs(cuts)
    assert (c.start, c.end, c.text) == (0.5, 0.75, "seg")
    res = preprocess(cuts, tmp_path / "out", "mulaw-16k", progress=False)
    assert res.num_errors == 0
    (item,) = list(ShardSet(tmp_path / "out").items())
    wav, sr = speechtok.load_audio(sample_path)  # the segment at the file's rate, resampled by the model
    a, b = round(0.5 * sr), round(0.75 * sr)
    ref = speechtok.load("mulaw-16k").encode(wav[:, a:b], sample_rate=sr).codes[0]
    assert torch.equal(item.codes, ref)
    assert item.meta["text"] == "seg"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "audio": "x.wav"}\n{"id": "a", "audio": "y.wav"}\n')
    with pytest.raises(InputError, match="duplicate id 'a'"):
        read_inputs(bad)
    bad.write_text("{not json\n")
    with pytest.raises(InputError, match="bad.jsonl:1"):
        read_inputs(bad)


def test_shard_dataset_splits_workers_and_ranks(tmp_path):
    data = make_dataset(tmp_path / "in", 30)
    preprocess(data, tmp_path / "out", "mulaw-16k", config=PreprocessConfig(shard_items=4), progress=False)
    everything = sorted(it.id for it in ShardDataset(tmp_path / "out"))
    assert len(everything) == 30
    parts = [sorted(it.id for it in ShardDataset(tmp_path / "out", shuffle=True, seed=3, shuffle_buffer=5,
                                                 rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(parts, [])) == everything and all(parts)
    loader = torch.utils.data.DataLoader(ShardDataset(tmp_path / "out"), batch_size=None, num_workers=2,
                                         collate_fn=lambda x: x)
    assert sorted(it.id for it in loader) == everything
    one = next(iter(ShardDataset(tmp_path / "out", num_codebooks=1)))
    assert one.codes.dim() == 2 and one.codes.shape[0] == 1
    ds = ShardDataset(tmp_path / "out")
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=ds.collate)
    batch = next(iter(loader)).validate()
    first = list(ShardDataset(tmp_path / "out"))[:5]
    assert batch.codes.shape[:2] == (5, 1) and batch.lengths.tolist() == [it.codes.shape[1] for it in first]
    assert torch.equal(batch.codes[2, :, : batch.lengths[2]], first[2].codes)
    assert (batch.codes[0, :, batch.lengths[0]:] == -1).all()


def test_corrupt_shard_is_named(tmp_path):
    data = make_dataset(tmp_path / "in", 5)
    preprocess(data, tmp_path / "out", "mulaw-16k", progress=False)
    st = next((tmp_path / "out" / "shards").glob("*.safetensors"))
    st.write_bytes(st.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ShardError, match=st.name):
        list(ShardSet(tmp_path / "out", verify=True).items())


def test_cli_preprocess(tmp_path):
    from click.testing import CliRunner

    from speechtok.cli.main import main

    data = make_dataset(tmp_path / "in", 12)
    r = CliRunner().invoke(main, ["preprocess", str(data), str(tmp_path / "out"), "-m", "mulaw-16k", "--shard-items", "5",
                                  "--no-progress"])
    assert r.exit_code == 1, r.output  # one item (broken.wav) failed: reported, and a non-zero exit
    assert "12 items in 3 shards" in r.output and "1 errors" in r.output
    assert f"error: {data / 'spk0' / 'broken.wav'}: " in r.output
    assert len(ShardSet(tmp_path / "out")) == 12
    r = CliRunner().invoke(main, ["preprocess", str(data), str(tmp_path / "out"), "-m", "mulaw-16k", "-k", "1",
                                  "--no-progress"])
    assert r.exit_code == 1 and "existing job" in r.output


def test_hugging_face_dataset_input(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = make_dataset(tmp_path / "in", 4)
    files = sorted(str(p) for p in data.rglob("utt*.wav"))
    ds = datasets.Dataset.from_dict({"audio": files, "id": [f"hf{i}" for i in range(4)],
                                     "text": ["a", "b", "c", "d"]}).cast_column("audio", datasets.Audio())
    items = read_inputs(ds)
    assert [(it.id, it.path, it.text) for it in items] == [(f"hf{i}", f, "abcd"[i]) for i, f in enumerate(files)]
    res = preprocess(ds, tmp_path / "out", "mulaw-16k", progress=False)
    assert res.num_items == 4 and res.num_errors == 0
    assert sorted(it.meta["text"] for it in ShardSet(tmp_path / "out").items()) == ["a", "b", "c", "d"]


def test_item_that_fails_to_encode_is_isolated(tmp_path):
    import soundfile as sf

    data = tmp_path / "in"
    data.mkdir()
    for i in range(6):
        sf.write(str(data / f"x{i}.wav"), np.full(1000 + 10 * i, 0.1, dtype="float32"), 16000)
    tok = speechtok.load("mulaw-16k")
    encode = tok.encode

    def picky(wav, sample_rate=None, lengths=None, num_codebooks=None):
        if lengths is not None and 1030 in lengths.tolist():
            raise RuntimeError("model failed on a 1030-sample item")
        return encode(wav, sample_rate=sample_rate, lengths=lengths, num_codebooks=num_codebooks)

    tok.encode = picky
    res = preprocess(data, tmp_path / "out", tok, config=PreprocessConfig(max_batch_size=6), progress=False)
    assert (res.num_items, res.num_errors) == (6, 1)
    shards = ShardSet(tmp_path / "out")
    assert sorted(it.id for it in shards.items()) == ["x0", "x1", "x2", "x4", "x5"]
    (err,) = shards.errors()
    assert err["id"] == "x3" and "1030-sample" in err["error"]


def test_list_inputs(tmp_path):
    data = make_dataset(tmp_path / "in", 3)
    lst = tmp_path / "files.txt"
    lst.write_text("# a list file: paths relative to it\nin/spk1/utt0001.wav\n\nin/spk2/utt0002.wav\n")
    assert [(it.id, it.path) for it in read_inputs(lst)] == [
        ("utt0001", str(data / "spk1" / "utt0001.wav")), ("utt0002", str(data / "spk2" / "utt0002.wav"))]
    items = read_inputs([data / "spk0" / "utt0000.wav", str(data / "spk1" / "utt0001.wav")])
    assert [it.id for it in items] == ["utt0000", "utt0001"]
    with pytest.raises(InputError, match="no such file"):
        read_inputs(tmp_path / "missing.jsonl")


def test_long_files_are_streamed_with_the_same_codes(tmp_path):
    """Whole-file items longer than ``long_file_seconds`` are streamed from disk by a codec
    (encode-only load): the shards hold the same codes as loading every file whole."""
    from speechtok.codec import CodecTokenizer, preset

    data = make_dataset(tmp_path / "in", 12)
    torch.manual_seed(0)
    tok = CodecTokenizer.from_config(preset("tiny"), seed=0)
    tok.save(tmp_path / "codec")
    kw = dict(shard_items=5, batch_seconds=2.0, max_batch_size=4, num_workers=1)
    whole = preprocess(data, tmp_path / "whole", str(tmp_path / "codec"), config=PreprocessConfig(**kw), progress=False)
    streamed = preprocess(data, tmp_path / "streamed", str(tmp_path / "codec"),
                          config=PreprocessConfig(long_file_seconds=0.2, **kw), progress=False)
    assert whole.num_errors == streamed.num_errors == 1
    a, b = ShardSet(tmp_path / "whole", verify=True), ShardSet(tmp_path / "streamed", verify=True)
    long_items = [it for it in a.items() if it.audio_length > 0.2 * tok.sample_rate]
    assert long_items and len(long_items) < len(a)  # both paths exercised
    items_b = {it.id: it for it in b.items()}
    for it in a.items():
        assert torch.equal(it.codes, items_b[it.id].codes), it.id
        assert it.audio_length == items_b[it.id].audio_length
