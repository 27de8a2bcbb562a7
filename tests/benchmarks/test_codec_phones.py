"""`speechtok.benchmarks.codec_phones`: PNMI per codebook against phone alignments."""
import json

import numpy as np
import soundfile as sf
import torch

from speechtok.benchmarks.codec_phones import codebook_phone_scores, phone_items
from speechtok.codes import Codes

PHONES = [(0.0, 0.2, "_"), (0.2, 0.5, "a"), (0.5, 0.7, "b"), (0.7, 1.0, "a"), (1.0, 1.2, "c")]


class PhoneOracle:
    """Codebook 0 = the phone under each 20 ms frame (perfect), codebook 1 = constant (none)."""

    frame_rate = 50.0

    def encode(self, wav, sample_rate):
        T = int(wav.shape[-1] / sample_rate * self.frame_rate)
        ids = {"_": 0, "a": 1, "b": 2, "c": 3}
        centres = (np.arange(T) + 0.5) / self.frame_rate
        lab = [next(ids[p] for a, b, p in PHONES if a <= t < b) for t in centres]
        codes = torch.stack([torch.tensor(lab), torch.zeros(T, dtype=torch.long)])[None]
        return Codes.from_tensor(codes, torch.tensor([T]), frame_rate=self.frame_rate, codebook_sizes=(4, 4),
                                 sample_rate=sample_rate, model_id="oracle@0")


def test_pnmi_per_codebook_separates_phonetic_from_constant_codes(tmp_path):
    sf.write(tmp_path / "u.wav", np.zeros(int(1.2 * 16000), dtype=np.float32), 16000)
    (tmp_path / "u.tsv").write_text("".join(f"{a}\t{b}\t{p}\n" for a, b, p in PHONES))
    recs = [{"id": "u", "audio": "u.wav", "phones": "u.tsv", "speaker": "s1"},
            {"id": "v", "audio": "u.wav", "speaker": "s2"}]  # no alignment: left out
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    items = phone_items(str(tmp_path / "m.jsonl"), None, 10)
    assert [r["id"] for r in items] == ["u"]
    scores = codebook_phone_scores(PhoneOracle(), items)
    assert scores[0]["pnmi"] > 0.999 and scores[0]["units_used"] == 3  # silence frames are left out
    assert scores[1]["pnmi"] < 1e-9 and scores[1]["entropy_bits"] == 0.0
