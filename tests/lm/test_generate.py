"""Constrained generation with a real `transformers` model: every sample decodes."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from speechtok import Codes
from speechtok.lm import LMTokens, TokenLayout, decode_lenient, logits_processor

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]


def _tiny_lm(vocab, seed):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=256, n_embd=16, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("kw", [dict(pattern="flatten", add_bos=True, add_eos=True),
                                dict(pattern="delay", add_bos=True, add_eos=True, offset=20),
                                dict(pattern="delay", add_bos=True)])
def test_random_tiny_model_samples_always_decode(kw):
    codes = Codes.from_tensor(torch.zeros(1, 3, 1, dtype=torch.long), frame_rate=12.5, codebook_sizes=(7, 5, 6),
                              sample_rate=16000, model_id="m@1")
    layout = TokenLayout.for_codes(codes, **kw)
    V = layout.vocab_size + 9  # a model vocabulary larger than the layout's
    pad, eos = layout.special_id("pad"), layout.special_id("eos")
    for seed in range(4):
        lm = _tiny_lm(V, seed)
        with torch.no_grad():  # push probability onto the specials so samples end, stop early, misbehave
            lm.lm_head.weight[layout.special_id("hole")] *= 0
            lm.transformer.wte.weight[pad] += 3
        prompt = torch.full((3, 1), layout.special_id("bos"))
        ids = lm.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=40 + 7 * seed,
                          logits_processor=logits_processor(layout), pad_token_id=pad,
                          eos_token_id=eos if layout.add_eos else None)
        back, reports = decode_lenient(layout, ids)
        for b, rep in enumerate(reports):
            assert rep.problem is None or rep.problem.startswith("no terminator"), rep.problem
            row = ids[b].tolist()
            if layout.add_eos and eos in row:
                n = row.index(eos) + 1
                strict = layout.decode(LMTokens(torch.tensor([row[:n]]), torch.tensor([n])))
                T = int(back.lengths[b])
                assert rep.complete and int(strict.lengths[0]) == T
                assert torch.equal(strict.codes[0, :, :T], back.codes[b, :, :T])


def test_lm_example_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("lm_end_to_end", ROOT / "examples" / "lm_end_to_end.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["lm_end_to_end"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "s.wav"
    res = mod.main(["--steps", "30", "--max-new-tokens", "60", "--out", str(out)])
    assert res["losses"][-1] < res["losses"][0] and out.is_file()
    assert res["repair"].frames > 0 and res["audio"].lengths[0] > 0
    assert res["codes"].model_id == res["layout"].model_id
