"""`speechtok.benchmarks.phone_metrics`: frame labels, PNMI / purities, DTW and triphone ABX on toy
cases whose answers are known (by construction or by hand), and ABX against the reference
implementation (zerospeech-libriabx2) when it is installed."""
import math

import numpy as np
import pytest
import torch

from speechtok.benchmarks.phone_metrics import (Item, abx_cells, abx_error, abx_score, angular_distances,
                                                bootstrap_abx, bootstrap_pnmi, dtw_batch, frame_labels,
                                                item_frames, normalize_phone, pnmi_purity, read_phones,
                                                speech_mask, triphone_items)


def test_normalize_phone_strips_arpabet_stress_only():
    assert [normalize_phone(p) for p in ("AH0", "IY1", "ER2", "T", " sil ", "_", "pau")] == \
        ["AH", "IY", "ER", "T", "SIL", "SIL", "SIL"]
    assert [normalize_phone(p) for p in ("O2", "3:", "5", "r=", "@U")] == ["O2", "3:", "5", "r=", "@U"]  # SAMPA


def test_frame_labels_use_frame_centres_and_leave_uncovered_frames_unlabelled(tmp_path):
    (tmp_path / "p.tsv").write_text("0.10\t0.30\tAH1\n0.30\t0.40\tSIL\n0.40\t0.50\tT\n")
    ph = read_phones(tmp_path / "p.tsv")
    assert ph[0] == (0.1, 0.3, "AH1")
    lab = frame_labels(ph, 6, 10.0, 0.05)  # centres 0.05, 0.15, ..., 0.55
    assert lab.tolist() == ["", "AH", "AH", "SIL", "T", ""]
    assert speech_mask(lab).tolist() == [False, True, True, False, True, False]
    assert frame_labels([], 3, 100.0, 0.0).tolist() == ["", "", ""]


def test_pnmi_known_values():
    rng = np.random.default_rng(0)
    ph = rng.integers(0, 4, 5000).astype(str)
    m = pnmi_purity(ph, np.char.add("u", ph))  # a relabelled identity
    assert m["pnmi"] == pytest.approx(1.0) and m["phone_purity"] == pytest.approx(1.0)
    assert m["cluster_purity"] == pytest.approx(1.0) and m["units_used"] == 4
    # independent by construction: every (phone, unit) pair equally often -> I = 0 exactly
    P, U = np.meshgrid(np.arange(4), np.arange(7), indexing="ij")
    m = pnmi_purity(P.ravel().astype(str), U.ravel())
    assert abs(m["pnmi"]) < 1e-12 and m["phone_purity"] == pytest.approx(1 / 4)
    assert m["cluster_purity"] == pytest.approx(1 / 7)
    # uniform 4 phones, unit = phone // 2: I = log 2, H = log 4 -> PNMI 0.5, phone purity 0.5
    ph = np.repeat(np.arange(4), 10)
    m = pnmi_purity(ph.astype(str), ph // 2)
    assert m["pnmi"] == pytest.approx(0.5) and m["phone_purity"] == pytest.approx(0.5)
    assert m["cluster_purity"] == pytest.approx(1.0)
    # unlabelled frames are left out; zero-weight frames too
    m = pnmi_purity(np.array(["a", "b", "", ""]), np.array([0, 1, 0, 0]))
    assert m["pnmi"] == pytest.approx(1.0)
    m = pnmi_purity(np.array(["a", "b", "b"]), np.array([0, 1, 0]), weights=np.array([1, 1, 0]))
    assert m["pnmi"] == pytest.approx(1.0)
    # bootstrap SD: zero when every utterance is the same; positive when utterances differ
    same = [ph.astype(str)] * 3
    assert bootstrap_pnmi(same, [ph // 2] * 3, n=20) < 1e-12
    assert bootstrap_pnmi([ph[:20].astype(str), ph[20:].astype(str)], [ph[:20] // 2, ph[20:] % 2], n=20) > 0.01


def naive_dtw(d: np.ndarray) -> float:
    """libri-light's ``dtw`` transcribed: cumulative cost, backtracked path length."""
    N, M = d.shape
    c = np.zeros_like(d)
    c[0, 0] = d[0, 0]
    for i in range(1, N):
        c[i, 0] = d[i, 0] + c[i - 1, 0]
    for j in range(1, M):
        c[0, j] = d[0, j] + c[0, j - 1]
    for i in range(1, N):
        for j in range(1, M):
            c[i, j] = d[i, j] + min(c[i - 1, j], c[i, j - 1], c[i - 1, j - 1])
    i, j, n = N - 1, M - 1, 1
    while i > 0 and j > 0:
        up, left, diag = c[i - 1, j], c[i, j - 1], c[i - 1, j - 1]
        if diag <= left and diag <= up:
            i, j = i - 1, j - 1
        elif left <= up:
            j -= 1
        else:
            i -= 1
        n += 1
    return c[N - 1, M - 1] / (n + i + j)


def test_dtw_matches_libri_light_algorithm_and_a_hand_case():
    rng = np.random.default_rng(1)
    d = rng.random((12, 7, 9))
    la, lb = rng.integers(1, 8, 12), rng.integers(1, 10, 12)
    got = dtw_batch(torch.tensor(d), torch.tensor(la), torch.tensor(lb)).numpy()
    want = [naive_dtw(d[n, : la[n], : lb[n]]) for n in range(12)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # by hand: [[1, 0], [0, 5]]: cost 1 + 5 on the diagonal path of 2 cells -> 3
    assert float(dtw_batch(torch.tensor([[[1.0, 0.0], [0.0, 5.0]]]), torch.tensor([2]), torch.tensor([2]))) == 3.0
    x = torch.randn(1, 5, 3)
    assert float(dtw_batch(angular_distances(x, x), torch.tensor([5]), torch.tensor([5]))) < 1e-3


def test_angular_distance_is_angle_over_pi():
    x = torch.tensor([[[1.0, 0.0]]])
    y = torch.tensor([[[0.0, 2.0], [-1.0, 0.0], [1.0, 1.0]]])
    np.testing.assert_allclose(angular_distances(x, y)[0, 0].numpy(), [0.5, 1.0, 0.25], atol=1e-6)


def unit(deg: float) -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(deg)), math.sin(math.radians(deg))]])


def test_abx_hand_computed_case():
    """One speaker, one context: A/X among a1 (0 deg), a2 (60 deg); B = b1. X = a1: d(A=a2) = 1/3 <
    d(b1) = 1/2, correct; X = a2: d(a1) = 1/3 > d(b1 at 90 deg) = 1/6, an error -> 0.5. With b1 at
    120 deg the second triplet is a tie (1/3 = 1/3), half an error -> 0.25. No pair (b, a): one b."""
    items = [Item("u", "s", p, "x", "y", 0, 1) for p in ("a", "a", "b")]
    for b_deg, want in ((90, 0.5), (120, 0.25)):
        r = abx_error(items, [unit(0), unit(60), unit(b_deg)])
        assert r["within"] == pytest.approx(want) and r["n_triplets_within"] == 2
        assert math.isnan(r["across"]) and r["n_cells_across"] == 0


def test_abx_score_averages_contexts_then_speakers_then_phone_pairs():
    cells = [("c1", "s1", "a", "b", 0.0, 1), ("c2", "s1", "a", "b", 1.0, 50), ("c1", "s2", "a", "b", 1.0, 1),
             ("c1", "s1", "b", "a", 0.0, 3), ("c3", "s2", "b", "a", 0.7, 0)]  # no triplets: ignored
    # (a, b): s1 -> 0.5, s2 -> 1.0 -> 0.75; (b, a): 0.0 -> mean 0.375 (triplet counts do not weigh)
    assert abx_score(cells) == pytest.approx(0.375)
    assert abx_score(cells, {"s1": 1, "s2": 0}) == pytest.approx(0.25)
    lo, hi = bootstrap_abx(cells, n=50)
    assert 0.25 - 1e-9 <= lo <= hi <= 1.0 + 1e-9  # s1 alone: 0.25; s2 alone: (b, a) unseen, 1.0


def toy_corpus(n_spk: int, reps: int, feat, rate: float = 100.0, seed: int = 0):
    """Utterances of 6 phone strings over {a, b, c} with 3-6 frames per phone; ``feat(phone_index, speaker, rng)`` ->
    one frame ``[D]``. Returns (items, segments, utterance feats, alignments, speakers)."""
    rng = np.random.default_rng(seed)
    steps = np.random.default_rng(0).integers(1, 3, (6, 9))  # same texts for all, no phone twice in a row
    words = ["".join("abc"[i] for i in np.cumsum(w) % 3) for w in steps]
    items, segs, utts = [], [], {}
    for s in range(n_spk):
        for r in range(reps):
            for w, text in enumerate(words):
                utt, t, ph, frames = f"s{s}-{r}-{w}", 0, [], []
                for p in text:
                    n = int(rng.integers(3, 7))
                    ph.append((t / rate, (t + n) / rate, p))
                    frames += [feat("abc".index(p), s, rng) for _ in range(n)]
                    t += n
                x = torch.tensor(np.array(frames), dtype=torch.float32)
                utts[utt] = (x, ph, f"spk{s}")
                for it in triphone_items(ph, utt, f"spk{s}"):
                    items.append(it)
                    segs.append(item_frames(x, it, rate, 0.5 / rate))
    return items, segs, utts


def test_abx_one_hot_features_give_zero_and_random_features_give_a_half():
    items, segs, _ = toy_corpus(3, 2, lambda p, s, rng: np.eye(3)[p])
    assert all(len(s) == round((it.offset_s - it.onset_s) * 100) for it, s in zip(items, segs))
    r = abx_error(items, segs)
    assert r["within"] == 0.0 and r["across"] == 0.0 and r["n_triplets_within"] > 0 and r["n_triplets_across"] > 0
    items, segs, _ = toy_corpus(4, 3, lambda p, s, rng: rng.standard_normal(16), seed=2)
    r = abx_error(items, segs, seed=3)
    assert abs(r["within"] - 0.5) < 0.06 and abs(r["across"] - 0.5) < 0.06, r
    # speaker-dependent phone codes: within is perfect, across is not better than chance
    codes = np.random.default_rng(5).standard_normal((4, 3, 8))
    items, segs, _ = toy_corpus(4, 2, lambda p, s, rng: codes[s, p] + 0.05 * rng.standard_normal(8))
    r = abx_error(items, segs)
    assert r["within"] == 0.0 and r["across"] > 0.2


def test_abx_caps_and_seed():
    items, segs, _ = toy_corpus(4, 3, lambda p, s, rng: rng.standard_normal(8), seed=4)
    full = abx_cells(items, segs)
    capped = abx_cells(items, segs, max_per_cell=2, max_x_speakers=1, max_contexts=2, seed=1)
    assert capped["n_pairs"] < full["n_pairs"] and len({c[0] for c in capped["within"]}) <= 2
    assert abx_cells(items, segs, max_per_cell=2, seed=7) == abx_cells(items, segs, max_per_cell=2, seed=7)


def test_abx_equals_the_reference_implementation(tmp_path):
    """Same numbers as zerospeech-libriabx2 where no subsampling happens (group sizes under the caps)."""
    pytest.importorskip("zrc_abx2")
    from zrc_abx2.eval_ABX import EvalABX, EvalArgs

    means = np.random.default_rng(9).standard_normal((3, 6))
    items, segs, utts = toy_corpus(3, 1, lambda p, s, rng: means[p] + 1.5 * rng.standard_normal(6), seed=8)
    (tmp_path / "f").mkdir()
    for u, (x, _, _) in utts.items():
        np.save(tmp_path / "f" / f"{u}.npy", x.numpy())
    # libri-light slices frames [ceil(r*on - .5), floor(r*off - .5)): shift times so it takes ours
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    for it, s in zip(items, segs):
        a = round(it.onset_s * 100)
        lines.append(f"{it.utt} {(a + .25) / 100:.4f} {(a + len(s) + .75) / 100:.4f} {it.phone} {it.prev} "
                     f"{it.next} {it.speaker}")
    (tmp_path / "toy-dev.item").write_text("\n".join(lines) + "\n")
    ref = EvalABX().eval_abx(EvalArgs(path_data=str(tmp_path / "f"), path_item_file=str(tmp_path / "toy-dev.item"),
                                      feature_size=0.01, context_mode="within", max_size_group=10, max_x_across=5))
    ref = {r["abx-s-condition"]: r["score"] for r in ref}
    ours = abx_error(items, segs, max_per_cell=10, max_x_speakers=5)
    assert 0.05 < ours["within"] < 0.95 and 0.05 < ours["across"] < 0.95
    assert ours["within"] == pytest.approx(ref["within"], abs=1e-5)
    assert ours["across"] == pytest.approx(ref["across"], abs=1e-5)


def write_corpus(tmp_path, speakers, n_utts, source):
    """Tone utterances (one tone per phone, 0.1 s each) with phones TSVs; returns manifest rows."""
    import soundfile as sf

    tones, rows = {"a": 300.0, "b": 700.0, "c": 1500.0}, []
    for s in speakers:
        for u in range(n_utts):
            text = "abcbacab"[u % 3:] + "ca"
            t = np.arange(1600) / 16000
            wav = np.concatenate([np.sin(2 * np.pi * tones[p] * t) for p in text]).astype(np.float32)
            uid = f"{s}-{u}"
            sf.write(tmp_path / f"{uid}.wav", 0.3 * wav, 16000)
            (tmp_path / f"{uid}.tsv").write_text("".join(f"{i / 10:.1f}\t{(i + 1) / 10:.1f}\t{p}\n"
                                                         for i, p in enumerate(text)))
            rows.append({"id": uid, "audio": f"{uid}.wav", "phones": f"{uid}.tsv", "speaker": s, "source": source,
                         "duration": len(wav) / 16000})
    return rows


def test_units_layers_splits_and_end_to_end_on_mfcc(tmp_path):
    import json

    from speechtok.benchmarks import units_layers as ul

    real = write_corpus(tmp_path, ["r1", "r2", "r3"], 3, "toyreal") + \
        write_corpus(tmp_path, ["mbrola_x"], 2, "tts")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in real))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in real if r["speaker"] == "r2"))
    a = ul.parse_args(["--manifest", str(tmp_path / "m.jsonl"), "--dev-split", str(tmp_path / "dev.jsonl"),
                       "--k", "3"])
    sp = ul.make_splits(a)
    assert {r["speaker"] for r in sp["dev"]} == {"r2"} and {r["speaker"] for r in sp["train"]} == {"r1", "r3"}
    assert {r["speaker"] for r in sp["synthetic"]} == {"mbrola_x"}
    out = tmp_path / "res.md"
    assert ul.main(["--manifest", str(tmp_path / "m.jsonl"), "--dev-split", str(tmp_path / "dev.jsonl"), "--k", "3",
                    "--bootstrap", "5", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Phone information per feature layer") and "Command: `python -m" in text
    assert "## toyreal" in text and "## mbrola" in text and "| mfcc | - | 39 | 100 |" in text
