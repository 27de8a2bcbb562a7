"""UnitTokenizer through the Codes interface, speechtok.load, syllable units, and the CLI."""
from __future__ import annotations

import json

import pytest
import torch

import speechtok
from speechtok.units.api import extract_to_store, make_extractor, train_unit_tokenizer
from speechtok.units.featstore import FeatureStore
from speechtok.units.segment import SegmenterConfig


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """The shipped LJSpeech sample (22.05 kHz) cut into 4 files of different lengths."""
    import soundfile as sf

    from speechtok.audio import load_audio

    root = tmp_path_factory.mktemp("speech")
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "tokenizers" / "data" / "sample_ljspeech.flac"
    wav, sr = load_audio(sample)
    n = wav.shape[1]
    for i, (a, b) in enumerate([(0, n), (0, n // 2), (n // 3, n), (n // 4, n // 4 + n // 5)]):
        sf.write(str(root / f"u{i}.flac"), wav[0, a:b].numpy(), sr)
    return root, wav, sr


@pytest.fixture(scope="module")
def store(speech, tmp_path_factory):
    root, _, _ = speech
    ext = make_extractor("mfcc")
    return extract_to_store(str(root), ext, tmp_path_factory.mktemp("fs") / "feats", batch_seconds=3.0)


def test_store_holds_every_file(store, speech):
    root, _, _ = speech
    assert sorted(u["id"] for u in store.utterances) == [f"u{i}" for i in range(4)]
    assert store.spec.kind == "mfcc" and store.dim == 39


def test_frame_units_codes_interop(store, speech, tmp_path):
    _, wav, sr = speech
    tok = train_unit_tokenizer(store, make_extractor("mfcc"), n_clusters=16)
    codes = tok.encode(wav, sample_rate=sr).validate()
    assert codes.codebook_sizes == (16,) and codes.frame_rate == 100.0 and codes.num_codebooks == 1
    assert codes.model_id == tok.model_id and codes.durations is None
    # batched with lengths == per item
    n = wav.shape[1]
    batch = torch.zeros(2, 1, n)
    batch[0, 0] = wav[0]
    batch[1, 0, : n // 2] = wav[0, : n // 2]
    both = tok.encode(batch, sample_rate=sr, lengths=torch.tensor([n, n // 2]))
    half = tok.encode(wav[:, : n // 2], sample_rate=sr)
    assert torch.equal(both.unbatch()[1].codes, half.codes)
    # the codes file format round trip
    from speechtok.codesfile import load_codes, save_codes

    save_codes(tmp_path / "c.safetensors", codes)
    back = load_codes(tmp_path / "c.safetensors", expect_model_id=tok.model_id)
    assert torch.equal(back.codes, codes.codes)
    # dedup tokenizer: same units, merged, exact durations
    from speechtok.dedup import dedup, undedup
    from speechtok.units.tokenizer import UnitTokenizer

    dtok = UnitTokenizer(tok.extractor, tok.kmeans, dedup=True)
    d = dtok.encode(wav, sample_rate=sr).validate()
    assert d.model_id != codes.model_id
    assert torch.equal(undedup(d).codes, codes.codes)
    assert torch.equal(d.codes, dedup(codes).codes)
    assert d.token_rate() < codes.token_rate()


def test_save_load_via_registry(store, speech, tmp_path):
    _, wav, sr = speech
    tok = train_unit_tokenizer(store, make_extractor("mfcc"), n_clusters=8, dedup=True)
    tok.save(tmp_path / "units")
    meta = json.loads((tmp_path / "units" / "config.json").read_text())
    assert meta["kind"] == "units" and meta["config"]["spec"]["kind"] == "mfcc"
    back = speechtok.load(tmp_path / "units")
    a, b = tok.encode(wav, sample_rate=sr), back.encode(wav, sample_rate=sr)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.durations, b.durations) and a.model_id == b.model_id
    assert not back.can_decode


@pytest.mark.parametrize("method", ["mincut", "greedy"])
def test_syllable_units_at_target_rate(store, speech, method):
    _, wav, sr = speech
    seg = SegmenterConfig(method, target_rate=5.0)
    tok = train_unit_tokenizer(store, make_extractor("mfcc"), n_clusters=6, segmenter=seg)
    codes = tok.encode(wav, sample_rate=sr).validate()
    secs = float(codes.grid_frames()[0]) / codes.frame_rate
    assert codes.durations is not None
    assert abs(int(codes.lengths[0]) / secs - 5.0) < 0.3
    assert int(codes.grid_frames()[0]) == tok.extractor.num_frames(int(codes.audio_lengths[0]))


def test_mismatched_centroids_refused(store):
    from speechtok.units.features.base import FeatureError
    from speechtok.units.kmeans import KMeansModel
    from speechtok.units.tokenizer import UnitTokenizer

    with pytest.raises(FeatureError, match="39-d"):
        UnitTokenizer(make_extractor("mfcc"), KMeansModel(torch.zeros(4, 13)))
    km = KMeansModel(torch.zeros(4, 80), make_extractor("logmel").spec)
    with pytest.raises(FeatureError, match="kind"):
        UnitTokenizer(make_extractor("mfcc"), KMeansModel(torch.zeros(4, 39), km.spec.__class__(
            **{**km.spec.to_dict(), "dim": 39})))


def test_cli_features_kmeans_bpe(speech, tmp_path):
    from click.testing import CliRunner

    from speechtok.cli.units import units
    from speechtok.codesfile import save_codes

    root, wav, sr = speech
    r = CliRunner()
    res = r.invoke(units, ["features", str(root), str(tmp_path / "fs"), "--kind", "mfcc"])
    assert res.exit_code == 0, res.output
    assert FeatureStore(tmp_path / "fs").num_rows > 0
    again = r.invoke(units, ["features", str(root), str(tmp_path / "fs")])
    assert again.exit_code != 0 and "already holds a feature store" in again.output  # no traceback, no overwrite
    res = r.invoke(units, ["train-kmeans", str(tmp_path / "fs"), str(tmp_path / "tok"), "--k", "10", "--dedup"])
    assert res.exit_code == 0, res.output
    tok = speechtok.load(tmp_path / "tok")
    assert tok.codebook_sizes == (10,)
    res = r.invoke(units, ["train-kmeans", str(tmp_path / "fs"), str(tmp_path / "km.safetensors"), "--k", "5",
                           "--centroids-only"])
    assert res.exit_code == 0, res.output
    files = []
    for i in range(3):
        p = tmp_path / f"c{i}.safetensors"
        save_codes(p, tok.encode(wav[:, i * 3000:], sample_rate=sr))
        files.append(str(p))
    res = r.invoke(units, ["train-bpe", *files, str(tmp_path / "bpe"), "--vocab-size", "40", "--min-frequency", "1"])
    assert res.exit_code == 0, res.output
    from speechtok.bpe import UnitBPE

    assert UnitBPE.load(tmp_path / "bpe").meta["base_model_id"] == tok.model_id
    res = r.invoke(units, ["train-bpe", *files, str(tmp_path / "tok_bpe"), "--vocab-size", "40", "--min-frequency",
                           "1", "--tokenizer", str(tmp_path / "tok")])
    assert res.exit_code == 0, res.output
    full = speechtok.load(tmp_path / "tok_bpe")
    c = full.encode(wav, sample_rate=sr).validate()
    assert c.model_id == full.model_id != tok.model_id and c.codebook_sizes == full.codebook_sizes
    assert torch.equal(full.bpe.decode(c).codes, tok.encode(wav, sample_rate=sr).codes)
    res = r.invoke(units, ["import-kmeans", files[0], str(tmp_path / "x.safetensors")])
    assert res.exit_code != 0 and "trust" in res.output
