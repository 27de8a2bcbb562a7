"""Build the packaged benchmark set ``bench-mini`` from ``benchmarks/splits/dev_real.jsonl`` (provenance).

Run once from the repository root, with ``../shared`` present and pocketsphinx 5.1.1 importable
(only needed here, for the forced alignment of the LibriSpeech segments):

    PYTHONPATH=/path/with/pocketsphinx .venv/bin/python -P benchmarks/data/bench-mini/make_bench_mini.py

- speechocean762: one utterance per held-out speaker of ``dev_real.jsonl`` (16 speakers: 8 children,
  8 adults), 2.5-6 s, the one with the most words; FLAC and forced phone alignment copied as shipped
  in ``shared/data/real``; text = the corpus transcript.
- LibriSpeech train-clean-100 (the held-out speakers of ``dev_real.jsonl``, which have no
  transcripts here): one 2.5-6 s segment per speaker cut in a pause of >= 0.08 s found by
  Whisper-base word timestamps; kept only if Whisper base (on the whole utterance and on the segment)
  and Whisper tiny.en (on the segment) give the same normalised words, without digits and with every
  word in pocketsphinx's dictionary; text = that consensus (``text_source: asr-consensus``, not
  checked by a listener); phones = pocketsphinx 5.1.1 forced alignment of it (10 ms frames).
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DEV = ROOT / "benchmarks" / "splits" / "dev_real.jsonl"
# 4 female + 4 male LibriSpeech readers, fallbacks after them
LS_SPEAKERS = ["118", "1034", "1040", "1081", "103", "1069", "1088", "1098", "1116", "1183"]
PAUSE = 0.08  # s: the shortest pause a segment may start or end in
LS_WANTED = {"M": 4, "F": 4}
LS_GENDER = {"103": "F", "118": "M", "1034": "M", "1040": "M", "1069": "F", "1081": "M", "1088": "F",
             "1098": "F", "1116": "F", "1183": "F"}


def _store_text(t: str) -> str:
    """LibriSpeech style: upper case, apostrophes kept, other punctuation dropped."""
    t = t.upper().replace("-", " ")
    t = re.sub(r"[^A-Z0-9'\s]", " ", t)
    return " ".join(w.strip("'") for w in t.split() if w.strip("'"))


def _pick_speechocean(recs):
    by = defaultdict(list)
    for r in recs:
        if r["source"] == "speechocean762" and 2.5 <= r["duration"] <= 6.0:
            by[r["speaker"]].append(r)
    out = []
    for spk in sorted(by):
        rs = sorted(by[spk], key=lambda r: (-len(r["text"].split()), r["duration"], r["id"]))
        out.append(rs[0])
    return out


def _align(decoder, audio: np.ndarray, text: str) -> list[tuple[float, float, str]]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
    decoder.set_align_text(text.lower())
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    decoder.set_alignment()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    rows = []
    for word in decoder.get_alignment():
        for phone in word:
            name = "SIL" if phone.name in ("SIL", "<sil>", "sil") else phone.name
            rows.append((phone.start / 100, (phone.start + phone.duration) / 100, name))
    if not rows:
        raise RuntimeError("empty alignment")
    return rows


def main() -> int:
    from faster_whisper import WhisperModel
    from pocketsphinx import Decoder, get_model_path

    from speechtok.benchmarks.asr import whisper_model_dir
    from speechtok.benchmarks.metrics import normalize_text

    recs = [json.loads(x) for x in DEV.read_text().splitlines() if x.strip()]
    out_recs = []
    for r in _pick_speechocean(recs):
        spk = r["speaker"].split("-")[1]
        name = Path(r["audio"]).name
        shutil.copyfile((DEV.parent / r["audio"]).resolve(), HERE / "audio" / f"so762-{name}")
        shutil.copyfile((DEV.parent / r["phones"]).resolve(), HERE / "phones" / f"so762-{Path(r['phones']).name}")
        out_recs.append({"id": r["id"], "audio": f"audio/so762-{name}", "text": r["text"], "speaker": r["speaker"],
                         "source": "speechocean762", "sample_rate": 16000, "duration": r["duration"],
                         "gender": r["gender"], "age": r["age"], "group": "child" if r["age"] < 16 else "adult",
                         "phones": f"phones/so762-{Path(r['phones']).name}", "phones_source": r["phones_source"],
                         "text_source": "corpus", "original": f"speechocean762/train/{spk}/{name}"})

    base = WhisperModel(whisper_model_dir("base"), device="cpu", compute_type="int8", cpu_threads=2)
    tiny = WhisperModel(whisper_model_dir("tiny.en"), device="cpu", compute_type="int8", cpu_threads=2)
    words_of = set()
    with open(Path(get_model_path()) / "en-us" / "cmudict-en-us.dict", encoding="utf-8") as f:
        for line in f:
            words_of.add(line.split()[0].split("(")[0].upper())
    decoder = Decoder(samprate=16000, bestpath=False, loglevel="FATAL")

    def transcribe(model, x, **kw):
        segs, _ = model.transcribe(x, language="en", beam_size=1, condition_on_previous_text=False,
                                   vad_filter=False, **kw)
        return list(segs)

    taken = defaultdict(int)
    ls = {r["speaker"].split("_")[1]: r for r in recs if r["source"].startswith("librispeech")}
    for spk in LS_SPEAKERS:
        g = LS_GENDER[spk]
        if taken[g] >= LS_WANTED[g]:
            continue
        r = ls[spk]
        audio, sr = sf.read(str((DEV.parent / r["audio"]).resolve()), dtype="float32")
        assert sr == 16000
        words = [w for s in transcribe(base, audio, word_timestamps=True) for w in s.words]
        cuts = [0.0] + [(a.end + b.start) / 2 for a, b in zip(words, words[1:]) if b.start - a.end >= PAUSE] \
            + [len(audio) / sr]
        cands = sorted(((i, j) for i in range(len(cuts)) for j in range(i + 1, len(cuts))
                        if 2.5 <= cuts[j] - cuts[i] <= 6.0), key=lambda ij: abs(cuts[ij[1]] - cuts[ij[0]] - 4.5))
        for i, j in cands:
            a, b = cuts[i], cuts[j]
            seg_words = " ".join(w.word for w in words if w.start >= a - 0.01 and w.end <= b + 0.01)
            text = _store_text(seg_words)
            x = audio[int(round(a * sr)): int(round(b * sr))]
            hb = " ".join(s.text for s in transcribe(base, x))
            ht = " ".join(s.text for s in transcribe(tiny, x))
            ok = (normalize_text(seg_words) == normalize_text(hb) == normalize_text(ht) and text
                  and not re.search(r"\d", text) and all(w in words_of for w in text.split()))
            print(f"{spk} {a:.2f}-{b:.2f} {'OK ' if ok else 'no '} {seg_words!r} | {hb!r} | {ht!r}", flush=True)
            if not ok:
                continue
            try:
                phones = _align(decoder, x, text)
            except RuntimeError as e:
                print(f"  alignment failed: {e}")
                continue
            uid = f"ls-{Path(r['audio']).stem}-{int(round(a * 100)):04d}"
            sf.write(str(HERE / "audio" / f"{uid}.flac"), x, sr, subtype="PCM_16")
            (HERE / "phones" / f"{uid}.phones.tsv").write_text(
                "".join(f"{s:.2f}\t{e:.2f}\t{p}\n" for s, e, p in phones))
            out_recs.append({"id": uid, "audio": f"audio/{uid}.flac", "text": text, "speaker": r["speaker"],
                             "source": "librispeech", "sample_rate": 16000, "duration": round(len(x) / sr, 3),
                             "gender": g.lower(), "group": "native-adult",
                             "phones": f"phones/{uid}.phones.tsv",
                             "phones_source": "pocketsphinx-5.1.1-forced-alignment", "text_source": "asr-consensus",
                             "original": f"LibriSpeech/train-clean-100/{Path(r['audio']).stem} "
                                         f"[{a:.2f} s, {b:.2f} s]"})
            taken[g] += 1
            break
        else:
            print(f"{spk}: no segment kept")
    (HERE / "manifest.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in out_recs))
    print(f"{len(out_recs)} utterances, {sum(x['duration'] for x in out_recs):.1f} s")
    return 0


if __name__ == "__main__":
    (HERE / "audio").mkdir(exist_ok=True)
    (HERE / "phones").mkdir(exist_ok=True)
    sys.exit(main())
