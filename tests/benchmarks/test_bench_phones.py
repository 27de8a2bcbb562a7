"""Phone metrics of the benchmark (speechtok.benchmarks.bench_phones): toy cases with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speechtok.benchmarks.bench_phones import Alignment, phone_scores
from speechtok.benchmarks.phone_metrics import angular_distances, code_distances

FR = 50.0  # frames per second
PHONE_S = 0.1  # every phone lasts 5 frames
SEQ = "A B C A C B B A C".split()  # each phone three times per utterance


def _alignments(speakers: int = 4) -> dict[str, Alignment]:
    out = {}
    for s in range(speakers):
        rows = [(0.0, 0.2, "SIL")] + [(0.2 + i * PHONE_S, 0.2 + (i + 1) * PHONE_S, p) for i, p in enumerate(SEQ)]
        rows.append((rows[-1][1], rows[-1][1] + 0.2, "sil"))
        out[f"u{s}"] = Alignment(f"u{s}", f"spk{s}", tuple(rows))
    return out


def _codes(align: dict[str, Alignment], code_of: dict, k: int = 1, seed: int = 0) -> list[np.ndarray]:
    """Codebook 0: ``code_of[phone]`` on each frame (silence: code 9); further codebooks random."""
    rng = np.random.default_rng(seed)
    out = []
    for a in align.values():
        n = int(round(a.phones[-1][1] * FR))
        c0 = np.full(n, 9)
        for start, end, p in a.phones:
            c0[int(round(start * FR)):int(round(end * FR))] = code_of.get(p, 9)
        out.append(np.stack([c0] + [rng.integers(0, 50, n) for _ in range(k - 1)]))
    return out


def test_code_distance_is_the_angular_distance_of_one_hot_frames():
    g = torch.Generator().manual_seed(0)
    sizes = (5, 7, 3)
    x = torch.stack([torch.randint(0, s, (4, 6), generator=g) for s in sizes], -1)
    y = torch.stack([torch.randint(0, s, (4, 8), generator=g) for s in sizes], -1)

    def one_hot(c):
        return torch.cat([torch.nn.functional.one_hot(c[..., j], s) for j, s in enumerate(sizes)], -1).float()

    torch.testing.assert_close(code_distances(x, y), angular_distances(one_hot(x), one_hot(y)), atol=1e-6, rtol=0)


def test_codes_that_name_the_phone_score_perfectly():
    align = _alignments()
    codes = _codes(align, {"A": 0, "B": 1, "C": 2})
    means, ci, counts = phone_scores(codes, list(align), align, FR, 1, bootstrap=20)
    assert means["pnmi"] == pytest.approx(1.0) and means["abx_within"] == 0.0 and means["abx_across"] == 0.0
    assert counts["utterances"] == 4 and counts["frames"] == 4 * len(SEQ) * 5  # silence frames left out
    assert counts["abx_items"] == 4 * len(SEQ) and counts["abx_triplets_within"] > 0


def test_two_phones_sharing_a_code_give_the_known_errors():
    """A and B share code 0, C has code 1: of the 6 ordered phone pairs, (A, B) and (B, A) are pure
    ties (half an error each triplet), the other 4 are never wrong: ABX 0.5 * 2 / 6 = 1/6. PNMI:
    I(phone; code) / H(phone) with 3 equiprobable phones = (log 3 - 2/3 log 2) / log 3."""
    align = _alignments()
    codes = _codes(align, {"A": 0, "B": 0, "C": 1})
    means, _, _ = phone_scores(codes, list(align), align, FR, 1, bootstrap=0)
    assert means["abx_within"] == pytest.approx(1 / 6) and means["abx_across"] == pytest.approx(1 / 6)
    assert means["pnmi"] == pytest.approx((math.log(3) - 2 / 3 * math.log(2)) / math.log(3))


def test_random_codes_are_at_chance_and_abx_reads_the_first_k_codebooks():
    align = _alignments(speakers=6)
    rnd = [np.random.default_rng(i).integers(0, 50, (1, c.shape[1])) for i, c in
           enumerate(_codes(align, {"A": 0, "B": 1, "C": 2}))]
    means, ci, _ = phone_scores(rnd, list(align), align, FR, 1, bootstrap=50)
    assert 0.4 < means["abx_within"] < 0.6 and 0.4 < means["abx_across"] < 0.6
    assert ci["abx_across"][0] <= means["abx_across"] <= ci["abx_across"][1]
    # codebook 0 is noise, codebook 1 names the phone: PNMI (first codebook only) stays low at
    # every k; ABX at k=1 is at chance and at k=2 perfect (agreeing codebook 1 decides)
    codes = [np.stack([r[0], c[0]]) for r, c in zip(rnd, _codes(align, {"A": 0, "B": 1, "C": 2}))]
    one, _, _ = phone_scores(codes, list(align), align, FR, 1, bootstrap=0)
    two, _, _ = phone_scores(codes, list(align), align, FR, 2, bootstrap=0)
    assert one["pnmi"] == two["pnmi"] == pytest.approx(means["pnmi"]) and means["pnmi"] < 0.5
    assert one["abx_within"] == pytest.approx(means["abx_within"]) and two["abx_within"] == 0.0


def test_no_alignments_give_nan_and_a_bad_mode_is_refused():
    means, ci, counts = phone_scores([np.zeros((1, 10), int)], ["x"], {}, FR, 1)
    assert all(math.isnan(v) for v in means.values()) and counts["utterances"] == 0
    with pytest.raises(ValueError, match="ABX mode"):
        phone_scores([], [], {}, FR, 1, mode="diphone")


def test_a_bad_alignment_file_is_a_one_line_error_naming_it(tmp_path):
    from types import SimpleNamespace

    from speechtok.benchmarks.bench_phones import load_alignments

    bad = tmp_path / "u.phones.tsv"
    bad.write_text("0.0\tnot-a-number\tAH\n")
    with pytest.raises(ValueError, match=f"{bad}: not a phone alignment"):
        load_alignments([SimpleNamespace(id="u", speaker="s", phones=str(bad))])
    with pytest.raises(ValueError, match="missing.tsv: not a phone alignment"):
        load_alignments([SimpleNamespace(id="u", speaker="s", phones=str(tmp_path / "missing.tsv"))])
    assert load_alignments([SimpleNamespace(id="u", speaker="s", phones=None)]) == {}
