"""The packaged benchmark set (bench-mini), data resolution, and the LibriSpeech protocol preset."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechtok.benchmarks.suite import (PACKAGED_DIR, SUITES, read_librispeech, read_records, resolve_data)

ROOT = Path(__file__).resolve().parents[2]
MINI = PACKAGED_DIR / "bench-mini"


@pytest.fixture
def no_shared(tmp_path, monkeypatch):
    """An empty shared folder: nothing outside the package can be found."""
    (tmp_path / "empty-shared").mkdir()
    monkeypatch.setenv("SPEECHTOK_SHARED", str(tmp_path / "empty-shared"))
    with pytest.raises(FileNotFoundError, match="SPEECHTOK_SHARED"):
        resolve_data("real")


def _phones(path: str) -> list[tuple[float, float, str]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        start, end, phone = line.split("\t")
        rows.append((float(start), float(end), phone))
    return rows


def test_packaged_set_resolves_and_loads_from_the_package(no_shared):
    import soundfile as sf

    import speechtok.benchmarks
    from speechtok.benchmarks.runner import BenchConfig, select_utterances

    path, suite = resolve_data(None)  # the default
    assert suite is SUITES["bench-mini"] and Path(path) == MINI / "manifest.jsonl"
    assert Path(path).is_relative_to(Path(speechtok.benchmarks.__file__).parent)
    recs = read_records(path, suite)
    assert 16 <= len(recs) <= 24 and len({r["id"] for r in recs}) == len(recs)
    for r in recs:
        info = sf.info(r["audio"])
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC"), r["id"]
        assert info.frames / 16000 == pytest.approx(r["duration"], abs=0.01) and 2.5 <= r["duration"] <= 6.0
        assert r["text"] and r["text"] == r["text"].upper() and r["text_source"] in ("corpus", "asr-consensus")
        ph = _phones(r["phones"])
        assert ph[0][0] == 0.0 and all(a[1] == pytest.approx(b[0]) for a, b in zip(ph, ph[1:])), r["id"]
        assert ph[-1][1] == pytest.approx(r["duration"], abs=0.1) and sum(p != "SIL" for *_, p in ph) >= 5
    groups = {(r["source"], r["group"]) for r in recs}
    assert groups == {("speechocean762", "child"), ("speechocean762", "adult"), ("librispeech", "native-adult")}
    assert len({r["speaker"] for r in recs}) == len(recs)  # one utterance per speaker
    assert sum(f.stat().st_size for f in MINI.rglob("*") if f.is_file()) <= 2.5e6
    utts = select_utterances(path, BenchConfig(max_items=None), suite)
    assert len(utts) == len(recs) and {u.source for u in utts} == {"speechocean762", "librispeech"}
    assert utts[0].source != utts[1].source  # round-robin over sources
    assert all(u.audio.dim() == 1 and u.seconds == pytest.approx(u.audio.numel() / 16000) for u in utts)


def test_packaged_speakers_are_held_out_from_every_shipped_model():
    recs = read_records(str(MINI / "manifest.jsonl"))
    speakers = {r["speaker"] for r in recs}
    split = lambda name: {json.loads(x)["speaker"] for x in (ROOT / "benchmarks/splits" / name).read_text().splitlines()
                          if x.strip()}  # noqa: E731
    assert speakers <= split("dev_real.jsonl") and not speakers & split("train_real.jsonl")  # the Whisper units
    codec = json.loads((ROOT / "codec/train/configs/speechtok-16k-50hz-cpu.json").read_text())["data"]
    ls = {s for s in speakers if s.startswith("librispeech_")}
    assert ls and ls <= set(codec["exclude_speakers"])  # the codec saw no speechocean762 at all:
    card = (ROOT / "tokenizers/models/speechtok-16k-50hz/README.md").read_text()
    assert "speechocean" not in card.split("## Training")[1].split("##")[0].lower()
    mfcc = (ROOT / "tokenizers/models/units-mfcc500-16k/README.md").read_text()
    assert all(s.split("_")[1] in mfcc for s in ls) and "speechocean" not in mfcc.lower()


def test_packaged_card_attributes_every_corpus():
    card = (MINI / "README.md").read_text()
    recs = read_records(str(MINI / "manifest.jsonl"))
    assert "speechocean762" in card and "Apache License 2.0" in card
    assert "LibriSpeech" in card and "CC BY 4.0" in card and "Panayotov" in card
    assert f"{len(recs)} utterances" in card
    for r in recs:
        spk = r["speaker"].split("_")[-1].split("-")[-1]
        assert spk in card, r["speaker"]


# --------------------------------------------------------------------------------- LibriSpeech preset
@pytest.fixture
def fake_librispeech(tmp_path, sample_path):
    import soundfile as sf

    import speechtok

    wav, sr = speechtok.load_audio(sample_path, sample_rate=16000)
    root = tmp_path / "LibriSpeech" / "test-clean"
    layout = {("1089", "134686"): ["0001", "0000"], ("121", "121726"): ["0000"]}
    for (spk, ch), utts in layout.items():
        d = root / spk / ch
        d.mkdir(parents=True)
        lines = []
        for i, u in enumerate(utts):
            sf.write(str(d / f"{spk}-{ch}-{u}.flac"), wav[0, : 12000 + 4000 * i].numpy(), sr)
            lines.append(f"{spk}-{ch}-{u} IN BEING COMPARATIVELY MODERN")
        (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_preset_reads_the_folder_layout(fake_librispeech, tmp_path):
    target, suite = resolve_data(f"librispeech-test-clean:{fake_librispeech}")
    assert target == str(fake_librispeech) and suite.name == "librispeech-test-clean"
    assert suite.settings == {"max_items": None, "max_seconds": None}
    recs = read_records(target, suite)
    assert [r["id"] for r in recs] == ["1089-134686-0000", "1089-134686-0001", "121-121726-0000"]
    assert [r["duration"] for r in recs[:2]] == [1.0, 0.75] and recs[2]["speaker"] == "121"  # sorted by id
    assert all(r["text"] == "IN BEING COMPARATIVELY MODERN" and Path(r["audio"]).is_file() for r in recs)
    with pytest.raises(FileNotFoundError, match="give the LibriSpeech folder"):
        resolve_data("librispeech-test-clean")
    with pytest.raises(FileNotFoundError, match="not a LibriSpeech folder"):
        resolve_data(f"librispeech-test-clean:{tmp_path}")
    (fake_librispeech / "121" / "121726" / "121-121726-0000.flac").unlink()
    with pytest.raises(FileNotFoundError, match="121-121726.trans.txt:1: 121-121726-0000.flac is missing"):
        read_librispeech(target)


def _tiny_hubert_ctc(path: Path) -> Path:
    """A random 1-layer HubertForCTC with a letter CTC tokenizer and feature extractor, saved to ``path``."""
    import torch
    from transformers import HubertConfig, HubertForCTC, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

    path.mkdir(parents=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: i + 5 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")}}
    (path / "vocab.json").write_text(json.dumps(vocab))
    Wav2Vec2CTCTokenizer(str(path / "vocab.json"), word_delimiter_token="|").save_pretrained(str(path))
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(str(path))
    torch.manual_seed(0)
    cfg = HubertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                       num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, pad_token_id=0)
    HubertForCTC(cfg).save_pretrained(str(path))
    return path


def test_hubert_ctc_asr_is_greedy_ctc(tmp_path, sample_path):
    pytest.importorskip("transformers")
    import torch
    from transformers import HubertForCTC

    import speechtok
    from speechtok.benchmarks.asr import build_asr

    d = _tiny_hubert_ctc(tmp_path / "hubert")
    asr = build_asr(f"hubert-ctc:{d}")
    wav, _ = speechtok.load_audio(sample_path, sample_rate=16000)
    x = wav[0, :16000]
    model = HubertForCTC.from_pretrained(str(d)).eval()
    inputs = asr.features(x.numpy(), sampling_rate=16000, return_tensors="pt").input_values
    assert abs(float(inputs.mean())) < 1e-3 and float(inputs.std()) == pytest.approx(1.0, abs=1e-2)  # normalised
    with torch.no_grad():
        ids = model(inputs).logits.argmax(-1)[0].tolist()
    inv = {i: c for c, i in json.loads((d / "vocab.json").read_text()).items()}
    collapsed = [i for j, i in enumerate(ids) if (j == 0 or i != ids[j - 1]) and i > 3]
    expect = " ".join("".join(inv[i] for i in collapsed).replace("|", " ").split())
    assert asr.transcribe(x) == expect and asr.name == "hubert-ctc:hubert" and expect
    with pytest.raises(FileNotFoundError, match="not a transformers HuBERT CTC folder"):
        build_asr(f"hubert-ctc:{tmp_path}")


def test_cli_librispeech_preset_with_hubert_ctc(fake_librispeech, tmp_path):
    pytest.importorskip("transformers")
    from click.testing import CliRunner

    from speechtok.cli.main import main

    d = _tiny_hubert_ctc(tmp_path / "hubert")
    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["bench", "mulaw-16k", "--data", f"librispeech-test-clean:{fake_librispeech}",
                                  "--asr", f"hubert-ctc:{d}", "--metrics", "none", "--no-plots", "--no-intrusive",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["max_items"] is None and res["config"]["max_seconds"] is None
    assert res["asr"] == "hubert-ctc:hubert" and "librispeech-test-clean" in res["data"]
    assert [u["id"] for u in res["utterances"]] == ["1089-134686-0000", "121-121726-0000", "1089-134686-0001"]
    assert all(isinstance(u["asr_resynth"], str) and u["wer"] is not None for u in res["utterances"])


def test_cli_bench_defaults_run_from_the_package(no_shared, tmp_path):
    """`speechtok bench` with no model and no --data: the default model on the packaged set."""
    from click.testing import CliRunner

    from speechtok.cli.main import main
    from speechtok.registry import DEFAULT_MODEL

    pytest.importorskip("matplotlib", reason="plots need the bench extra")
    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["bench", "-o", str(out), "--max-items", "2", "--asr", "none", "--metrics", "none",
                                  "-k", "1,8", "--examples", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert {row["tokenizer"] for row in res["rows"]} == {DEFAULT_MODEL} and len(res["rows"]) == 2
    assert "bench-mini" in res["data"] and len(res["utterances"]) == 4 and (out / "results.md").is_file()
    assert {u["source"] for u in res["utterances"]} == {"speechocean762", "librispeech"}
    assert (out / res["examples"][0]["resynth"]).is_file() and len(res["examples"]) == 2
    assert f"| {DEFAULT_MODEL} | 8 |" in r.output
    assert (out / "report.html").stat().st_size > 1000 and (out / "bitrate_vs_mel.png").read_bytes()[:4] == b"\x89PNG"
    # the packaged set has phone alignments: PNMI of codebook 0 (same at every k) and phone ABX per k
    for row in res["rows"]:
        assert 0 < row["pnmi"] < 1 and 0 <= row["abx_within"] <= 1 and 0 <= row["abx_across"] <= 1
        lo, hi = row["ci"]["abx_across"]
        assert lo <= row["abx_across"] <= hi
        assert row["encode_throughput"] > 0 and row["decode_throughput"] > 0
    assert res["rows"][0]["pnmi"] == res["rows"][1]["pnmi"] and "ABX within" in r.output
    assert f"bench: {DEFAULT_MODEL} k=8: scored 2 utterances" in r.output  # progress, on stderr
