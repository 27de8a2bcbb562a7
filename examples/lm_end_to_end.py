"""Tokens -> a tiny LM -> generate -> audio, end to end on one machine in a minute.

    python examples/lm_end_to_end.py --steps 300 --out out/lm_sample.wav

1. encode audio with a speechtok tokenizer (default: the built-in codec, first 2 codebooks);
2. lay the codes out as LM ids (`TokenLayout`, delay pattern, bos/eos) and cut training windows
   with their `attention_mask` and `labels` (`make_windows`);
3. train a tiny GPT-2 (Hugging Face ``transformers``, random init) on them;
4. sample with ``generate`` under the layout's constraint (`logits_processor`), so every sample
   decodes; `decode_lenient` cuts an unfinished one to whole frames and says so;
5. decode the codes to audio with the same tokenizer (the layout records which model made them).

A real run would use a preprocessed corpus (`speechtok preprocess`, `ShardSet`) and a real LM;
every step here is the same API.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import speechtok
from speechtok.lm import TokenLayout, decode_lenient, logits_processor, make_windows

SAMPLE = Path(speechtok.__file__).parent / "data" / "sample_ljspeech.flac"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("audio", nargs="*", default=[str(SAMPLE)], help="audio files to learn from")
    ap.add_argument("--model", default=None, help="speechtok model (default: the built-in codec)")
    ap.add_argument("--codebooks", type=int, default=2)
    ap.add_argument("--window", type=int, default=32, help="training window, frames")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/lm_sample.wav")
    args = ap.parse_args(argv)
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    tok = speechtok.load(args.model)
    codes = []
    for path in args.audio:
        wav, sr = speechtok.load_audio(path)
        codes += tok.encode(wav[None], sample_rate=sr).take_codebooks(args.codebooks).unbatch()
    codes = speechtok.Codes.batch(codes)

    layout = TokenLayout.for_codes(codes, pattern="delay", add_bos=True, add_eos=True)
    win = make_windows(layout, codes, frames=args.window, hop=args.window // 2)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=layout.vocab_size, n_positions=1024, n_embd=64, n_layer=2,
                                    n_head=2, bos_token_id=layout.special_id("bos"),
                                    eos_token_id=layout.special_id("eos"), pad_token_id=layout.special_id("pad")))
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    t0, losses = time.time(), []
    for step in range(args.steps):
        i = torch.randint(0, len(win), (min(8, len(win)),))
        out = lm(input_ids=win.tokens.tokens[i], attention_mask=win.attention_mask[i].long(), labels=win.labels[i])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {losses[-1]:.3f} ({time.time() - t0:.0f} s)", flush=True)

    prompt = torch.tensor([[layout.special_id("bos")]])
    ids = lm.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=50,
                      max_new_tokens=args.max_new_tokens, logits_processor=logits_processor(layout),
                      pad_token_id=layout.special_id("pad"), eos_token_id=layout.special_id("eos"))
    sampled, (repair,) = decode_lenient(layout, ids)
    print(f"sampled {ids.shape[1]} ids -> {repair.frames} frames"
          + ("" if repair.complete else f" ({repair.problem})"))
    audio = tok.decode(sampled)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    speechtok.save_audio(args.out, audio.unbatch()[0], audio.sample_rate)
    print(f"wrote {args.out}: {audio.lengths[0] / audio.sample_rate:.2f} s at {audio.sample_rate} Hz")
    return dict(losses=losses, repair=repair, codes=sampled, audio=audio, layout=layout)


if __name__ == "__main__":
    main()
