"""lhotse export: ``cuts.jsonl.gz`` (one `MonoCut` per utterance) and ``codes/`` (one ``.npy`` per cut).

Each cut has:
    supervision   one segment over the whole cut (text, speaker when known);
    recording     the source audio when its path is recorded and the file's header can be read on
                  this machine (`lhotse.Recording.from_file`; a segment of a file keeps its start
                  and end); otherwise none (``cut.has_recording`` False, duration from the codes),
                  counted in the result's notes;
    custom        ``codes``: the codes, time first ``[T, K]`` (lhotse's convention; ``.T`` gives
                  speechtok's ``[K, T]``), int16 (int32 for codebooks over 32768), stored with lhotse's
                  `NumpyFilesWriter` under ``<out>/codes`` (an absolute path in the manifest) as a
                  `TemporalArray` (``temporal_dim=0``, ``frame_shift = 1 / frame_rate``, ``start`` = the
                  cut's), so lhotse's truncate/pad follow time. ``cut.load_codes()`` reads the frames
                  within the cut (lhotse rounds ``duration * frame_rate`` half up): without a recording
                  the cut lasts ``max(seconds, T / frame_rate)`` so that is every frame; with one it
                  lasts as the audio does, which drops frames a codec made past the end of the audio:
                  ``cut.custom["codes"].load()`` always reads all ``T``.
                  Codes with durations (dedup/BPE) are not on the frame grid: ``codes`` is then a
                  plain `Array` and ``durations`` (``[T]`` int32 grid frames per token) is added.
                  ``speechtok_model``: the model id.
Needs ``lhotse`` (``pip install 'speechtok[lm]'``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np

from .export_sources import ExportError, Utterance

CUTS_FILE, CODES_DIR = "cuts.jsonl.gz", "codes"


def import_lhotse():
    try:
        import lhotse
    except ImportError as e:
        raise ExportError("format lhotse needs the lhotse package: pip install 'speechtok[lm]'") from e
    return lhotse


def storage_key(uid: str) -> str:
    """A file-name-safe, unique key for an utterance id (hash prefix + readable tail)."""
    h = hashlib.sha1(uid.encode("utf-8")).hexdigest()[:12]
    return f"{h}-{re.sub(r'[^A-Za-z0-9._-]+', '_', uid)[-80:]}"


class LhotseWriter:
    """Streams cuts into ``staging/cuts.jsonl.gz`` and arrays into ``staging/codes``; the manifest
    points at ``final/codes`` (where the export moves them)."""

    def __init__(self, staging: Path, final: Path, model_id: str, frame_rate: float, codes_dtype):
        self.lhotse = import_lhotse()
        from lhotse import CutSet, NumpyFilesWriter

        self.staging, self.final_codes = staging, str(final.resolve() / CODES_DIR)
        self.model_id, self.frame_shift, self.codes_dtype = model_id, 1.0 / frame_rate, codes_dtype
        self._arrays = NumpyFilesWriter(str(staging / CODES_DIR))
        self._cuts = CutSet.open_writer(str(staging / CUTS_FILE))
        self._cuts.__enter__()
        self.no_recording = 0

    def _store(self, key: str, value: np.ndarray, temporal: bool, start: float):
        kw = dict(frame_shift=self.frame_shift, temporal_dim=0, start=start) if temporal else {}
        arr = self._arrays.store_array(key, value, **kw)
        if temporal:
            return dataclasses.replace(arr, array=dataclasses.replace(arr.array, storage_path=self.final_codes))
        return dataclasses.replace(arr, storage_path=self.final_codes)

    def _recording(self, utt: Utterance):
        if utt.audio_path is None or not Path(utt.audio_path).is_file():
            return None
        try:
            return self.lhotse.Recording.from_file(utt.audio_path, recording_id=utt.audio_path)
        except Exception:  # noqa: BLE001 - an audio file lhotse cannot read: the cut goes without it
            return None

    def add(self, utt: Utterance) -> int:
        from lhotse import MonoCut, SupervisionSegment

        key = storage_key(utt.id)
        if (self.staging / CODES_DIR / key[:3] / f"{key}.npy").exists():
            raise ExportError(f"{utt.origin}: item id {utt.id!r} occurs twice: lhotse cut ids must be unique")
        rec = self._recording(utt)
        if rec is None:
            self.no_recording += 1
            start, duration = 0.0, max(utt.seconds, utt.codes.num_frames * self.frame_shift)
        else:
            start = utt.start
            duration = (utt.end if utt.end is not None else rec.duration) - start
        codes = np.ascontiguousarray(utt.codes.codes[0].numpy().T.astype(self.codes_dtype))  # [T, K]
        custom = {"speechtok_model": self.model_id}
        if utt.codes.durations is None:
            custom["codes"] = self._store(key, codes, True, start)
        else:
            custom["codes"] = self._store(key, codes, False, start)
            custom["durations"] = self._store(key + ".durations", utt.codes.durations[0].numpy().astype(np.int32),
                                              False, start)
        sup = SupervisionSegment(id=utt.id, recording_id=rec.id if rec else utt.id, start=0.0, duration=duration,
                                 channel=0, text=utt.text, speaker=utt.speaker)
        cut = MonoCut(id=utt.id, start=start, duration=duration, channel=0, recording=rec, supervisions=[sup],
                      custom=custom)
        self._cuts.write(cut)
        return 0

    def finish(self) -> list[str]:
        self.close()
        (self.staging / CODES_DIR).mkdir(exist_ok=True)
        return [CUTS_FILE, CODES_DIR]

    def close(self):
        if self._cuts is not None:
            self._cuts.__exit__(None, None, None)
            self._cuts = None

    def notes(self) -> list[str]:
        return [f"{self.no_recording} cuts have no recording (source audio not recorded or not readable here)"] \
            if self.no_recording else []
