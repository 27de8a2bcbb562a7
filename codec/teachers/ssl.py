"""`SSLTeacher`: HuBERT / WavLM / wav2vec 2.0 hidden states through torchaudio, at a chosen layer.

Weights come from a local Hugging Face directory (``config.json`` + weights, read with
``transformers`` without network and converted by torchaudio's ``import_huggingface_model``) or,
only with an explicit ``trust_pickle=True``, from a fairseq ``.pt`` checkpoint (which is a pickle
and can run arbitrary code when loaded; it also needs ``fairseq`` installed).

Layer ``l`` (1-based) is the output of transformer layer ``l`` (HF ``hidden_states[l]``); the
conv front end maps 16 kHz audio to 50 Hz frames (receptive field 400 samples, stride 320), so
frame ``j`` is centred at ``(320 j + 200) / 16000`` s and ``TeacherFeatures.start`` is 2.5 ms.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..distill import TeacherFeatures


class SSLTeacher:
    """A frozen torchaudio ``Wav2Vec2Model`` (HuBERT/WavLM/wav2vec2) read out at ``layer``.

    Args:
        model: a torchaudio ``Wav2Vec2Model``.
        layer: transformer layer, 1-based; None = the last.
        description: what to record in checkpoints/caches about the weights.
    """

    sample_rate = 16000
    frame_rate = 50.0
    start_seconds = 200 / 16000 - 0.5 / 50.0

    def __init__(self, model: torch.nn.Module, *, layer: Optional[int] = None, description: Optional[dict] = None):
        self.model = model.eval().requires_grad_(False)
        n_layers = len(model.encoder.transformer.layers)
        self.layer = n_layers if layer is None else int(layer)
        if not 1 <= self.layer <= n_layers:
            raise ValueError(f"teacher layer {layer} outside [1, {n_layers}]")
        self.dim = int(model.encoder.feature_projection.projection.out_features)
        # torchaudio's WavLM attention takes no padding mask: padded batches run item by item
        att = type(model.encoder.transformer.layers[0].attention).__name__
        self._masks = "WavLM" not in att
        self._description = dict(description or {}, layer=self.layer, dim=self.dim)

    def describe(self) -> dict:
        return dict(self._description)

    def to(self, device) -> "SSLTeacher":
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, lengths: torch.Tensor, sample_rate: int,
                 ids: Optional[Sequence[str]] = None, offsets: Optional[torch.Tensor] = None) -> TeacherFeatures:
        """``audio`` ``[B, 1, S]`` at ``sample_rate`` -> layer states ``[B, T, D]`` (50 Hz)."""
        dev = next(self.model.parameters()).device
        x = audio.detach().float().mean(dim=1).to(dev)
        lens = lengths.to(dev)
        if sample_rate != self.sample_rate:
            import torchaudio.functional as AF

            x = AF.resample(x, sample_rate, self.sample_rate)
            lens = (lens * self.sample_rate + sample_rate - 1) // sample_rate
        if self._masks:
            feats, out_lens = self.model.extract_features(x, lens, num_layers=self.layer)
            h = feats[self.layer - 1].float()
        elif bool((lens == x.shape[-1]).all()):
            h = self.model.extract_features(x, None, num_layers=self.layer)[0][self.layer - 1].float()
            out_lens = None
        else:
            hs = [self.model.extract_features(x[b:b + 1, : int(lens[b])], None, num_layers=self.layer)[0]
                  [self.layer - 1][0].float() for b in range(x.shape[0])]
            h = torch.nn.utils.rnn.pad_sequence(hs, batch_first=True)
            out_lens = torch.tensor([t.shape[0] for t in hs], device=h.device)
        if out_lens is None:
            out_lens = torch.full((h.shape[0],), h.shape[1], dtype=torch.long, device=h.device)
        start = torch.full((h.shape[0],), self.start_seconds, dtype=torch.float64)
        return TeacherFeatures(h, self.frame_rate, start, out_lens.long().clamp(min=0, max=h.shape[1]))


def load_ssl_teacher(path: str, *, layer: Optional[int] = None, trust_pickle: bool = False,
                     fairseq: bool = False) -> SSLTeacher:
    """An `SSLTeacher` from a Hugging Face directory or (``trust_pickle`` only) a fairseq ``.pt``."""
    from torchaudio.models.wav2vec2.utils import import_fairseq_model, import_huggingface_model

    p = Path(path)
    if fairseq or p.suffix == ".pt":
        if not trust_pickle:
            raise ValueError(f"{p}: fairseq checkpoints are pickles that can run arbitrary code when loaded; "
                             "pass trust_pickle=True (teacher config \"trust_pickle\": true) only for files "
                             "you trust, or convert the model to a Hugging Face directory")
        try:
            from fairseq import checkpoint_utils
        except ImportError as e:
            raise ImportError(f"{p}: loading fairseq checkpoints needs `pip install fairseq`") from e
        models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(p)])
        model = import_fairseq_model(models[0])
        return SSLTeacher(model, layer=layer, description={"kind": "fairseq", "path": str(p)})
    if not (p / "config.json").is_file():
        raise ValueError(f"{p}: not a Hugging Face model directory (no config.json)")
    try:
        from transformers import AutoModel
    except ImportError as e:  # pragma: no cover
        raise ImportError("HuBERT/WavLM teachers from Hugging Face directories need transformers: "
                          "pip install 'speechtok[train]'") from e
    hf = AutoModel.from_pretrained(str(p), local_files_only=True)
    model = import_huggingface_model(hf)
    return SSLTeacher(model, layer=layer, description={"kind": "hf", "path": str(p),
                                                       "model_type": hf.config.model_type})
