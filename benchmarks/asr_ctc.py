"""HuBERT CTC ASR (transformers ``HubertForCTC``): the ASR of the ``librispeech-test-clean`` preset.

``--asr hubert-ctc:DIR`` with ``DIR`` a saved transformers folder holding the model
(``config.json`` + weights) and its processor (``preprocessor_config.json`` and the CTC
tokenizer's ``vocab.json``), e.g. a local copy of ``facebook/hubert-large-ls960-ft``, the model
codec papers report WER with. Greedy CTC decoding (`HubertCTCASR.greedy_decode`); the text comes back as the tokenizer spells it
(LibriSpeech style: upper case).
"""
from __future__ import annotations

from pathlib import Path

import torch


class HubertCTCASR:
    """Greedy CTC transcription of mono 16 kHz audio ``[S]`` with a local HuBERT CTC folder."""

    sample_rate = 16000

    def __init__(self, model_dir: str, device: str = "cpu"):
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a transformers HuBERT CTC folder (no config.json)")
        try:
            from transformers import AutoFeatureExtractor, AutoTokenizer, HubertForCTC
        except ImportError as e:
            raise ImportError("hubert-ctc ASR needs transformers: pip install 'speechtok[ssl]'") from e
        try:
            self.model = HubertForCTC.from_pretrained(str(path), local_files_only=True).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.features = AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{path}: cannot load a HuBERT CTC model and processor ({e})") from e
        self.device = device
        self.name = f"hubert-ctc:{path.name}"

    @torch.inference_mode()
    def transcribe(self, audio: torch.Tensor) -> str:
        x = audio.detach().float().cpu().reshape(-1).numpy()
        inputs = self.features(x, sampling_rate=self.sample_rate, return_tensors="pt")
        logits = self.model(inputs.input_values.to(self.device)).logits
        return self.greedy_decode(logits.argmax(-1)[0].tolist())

    def greedy_decode(self, ids: list[int]) -> str:
        """CTC: merge repeats, then drop the blank (the pad token) and other specials; ``|`` -> space.
        (The tokenizer's own ``decode(skip_special_tokens=True)`` drops blanks before merging, which
        joins a doubled letter.)"""
        tok = self.tokenizer
        blank, special = tok.pad_token_id, set(tok.all_special_ids)
        kept = [i for j, i in enumerate(ids) if (j == 0 or i != ids[j - 1]) and i != blank and i not in special]
        delim = getattr(tok, "word_delimiter_token", "|") or "|"
        text = "".join(tok.convert_ids_to_tokens(kept)).replace(delim, " ")
        return " ".join(text.split())
