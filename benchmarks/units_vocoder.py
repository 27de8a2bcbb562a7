"""Intelligibility of unit resynthesis: audio -> units -> unit vocoder -> audio, scored by ASR.

    python -m speechtok.benchmarks.units_vocoder --tokenizer /work/e_train/units-mfcc-500-voc \
        --manifest /work/shared/data/real/manifest.jsonl --asr whisper:base -o benchmarks/results/units_vocoder.md

For each dev utterance (the LibriSpeech dev speakers kept out of unit and vocoder training, by
default): encode with the tokenizer (its own output form: frame, deduped, BPE or syllable codes),
decode with its vocoder, transcribe original and resynthesis with Whisper (faster-whisper base).
The reference text is the manifest's ``text``, or the Whisper transcript of the original where
``text`` is null (LibriSpeech here); WER/CER of the original against it is then 0 by
construction and shown as "ref". Mel distance (`speechtok.benchmarks.metrics.mel_distance`) is
between original and resynthesis at the tokenizer's rate.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

DEV_SPEAKERS = ("librispeech_103", "librispeech_1034", "librispeech_1040", "librispeech_1069", "librispeech_1081",
                "librispeech_1088", "librispeech_1098", "librispeech_1116", "librispeech_118", "librispeech_1183")


@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path
    text: Optional[str]


@dataclass(frozen=True)
class Row:
    """One utterance: reference text, both transcripts, mel distance, seconds of audio."""

    id: str
    reference: str
    reference_is_asr: bool
    original_hyp: str
    resynth_hyp: str
    mel: float
    seconds: float


@dataclass(frozen=True)
class VocoderEval:
    rows: list
    model_id: str
    asr: str
    bitrate: float  # of the codes actually decoded (effective with durations)

    def summary(self) -> dict:
        from .metrics import char_errors, corpus_rate, word_errors

        texted = [r for r in self.rows if not r.reference_is_asr]
        out = {"utterances": len(self.rows), "seconds": sum(r.seconds for r in self.rows),
               "wer_resynth": corpus_rate([word_errors(r.reference, r.resynth_hyp) for r in self.rows]),
               "cer_resynth": corpus_rate([char_errors(r.reference, r.resynth_hyp) for r in self.rows]),
               "mel": sum(r.mel for r in self.rows) / max(1, len(self.rows)), "bitrate": self.bitrate}
        out["wer_original"] = (corpus_rate([word_errors(r.reference, r.original_hyp) for r in texted])
                               if texted else None)
        out["cer_original"] = (corpus_rate([char_errors(r.reference, r.original_hyp) for r in texted])
                               if texted else None)
        return out


def dev_utterances(manifest: Path, speakers: Sequence[str] = DEV_SPEAKERS, limit: Optional[int] = None) -> list:
    """Utterances of ``speakers`` from a shared/-schema manifest (audio paths relative to it)."""
    manifest = Path(manifest)
    out = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("speaker") in speakers:
            out.append(Utterance(r["id"], manifest.parent / r["audio"], r.get("text")))
    if not out:
        raise ValueError(f"{manifest}: no utterance of speakers {list(speakers)}")
    return out[:limit] if limit else out


def evaluate(tokenizer, items: Sequence[Utterance], asr) -> VocoderEval:
    """Resynthesize ``items`` with ``tokenizer`` (which must decode) and score them with ``asr``."""
    from speechtok.audio import load_audio, resample

    from .metrics import mel_distance

    if not getattr(tokenizer, "can_decode", False):
        raise ValueError(f"{tokenizer.model_id} cannot decode: train a vocoder (speechtok units train-vocoder)")
    rows, bits, secs = [], 0.0, 0.0
    for it in items:
        wav, sr = load_audio(it.path, sample_rate=tokenizer.sample_rate)
        codes = tokenizer.encode(wav, sample_rate=sr)
        y = tokenizer.decode(codes).unbatch()[0]
        n = min(wav.shape[-1], y.shape[-1])
        x, y = wav[:, :n], y[:, :n]
        to_asr = (lambda a: a[0] if sr == asr.sample_rate else resample(a, sr, asr.sample_rate)[0])
        orig_hyp = asr.transcribe(to_asr(x))
        ref = it.text if it.text else orig_hyp
        s = n / sr
        bits += codes.bitrate() * s
        secs += s
        rows.append(Row(it.id, ref, not it.text, orig_hyp, asr.transcribe(to_asr(y)),
                        mel_distance(x, y, sr), s))
    return VocoderEval(rows, tokenizer.model_id, getattr(asr, "name", type(asr).__name__), bits / max(secs, 1e-9))


def markdown(result: VocoderEval, command: str) -> str:
    s = result.summary()

    def pct(v):
        return "ref" if v is None else f"{100 * v:.1f}"

    lines = [f"# Unit vocoder resynthesis: {result.model_id}", "",
             f"{s['utterances']} dev utterances, {s['seconds']:.1f} s; ASR {result.asr}; "
             f"codes at {s['bitrate']:.0f} bit/s.", "",
             "| audio | WER % | CER % | mel distance |", "|---|---|---|---|",
             f"| original | {pct(s['wer_original'])} | {pct(s['cer_original'])} | 0 |",
             f"| resynthesis | {pct(s['wer_resynth'])} | {pct(s['cer_resynth'])} | {s['mel']:.3f} |", "",
             "Reference: the manifest text, or the ASR transcript of the original where the manifest has none.",
             "", "| id | s | mel | reference | resynthesis transcript |", "|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {r.id} | {r.seconds:.1f} | {r.mel:.3f} | {r.reference} | {r.resynth_hyp} |")
    lines += ["", "Reproduce:", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="unit tokenizer directory with a vocoder")
    ap.add_argument("--manifest", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "real" /
                                              "manifest.jsonl"))
    ap.add_argument("--speakers", nargs="*", default=list(DEV_SPEAKERS))
    ap.add_argument("--n", type=int, default=None, help="at most N utterances")
    ap.add_argument("--asr", default="whisper:base", help="whisper:base, whisper:tiny.en, a CTranslate2 dir, ...")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--out", default=None, help="write the markdown report here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import speechtok

    from .asr import build_asr

    t0 = time.time()
    tok = speechtok.load(args.tokenizer)
    res = evaluate(tok, dev_utterances(Path(args.manifest), args.speakers, args.n), build_asr(args.asr))
    cmd = "python -m speechtok.benchmarks.units_vocoder " + " ".join(shlex.quote(a) for a in
                                                                    (argv if argv is not None else sys.argv[1:]))
    text = markdown(res, cmd)
    print(text)
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
    if args.out:
        from speechtok.atomic import atomic_write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
