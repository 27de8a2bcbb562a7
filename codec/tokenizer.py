"""`CodecTokenizer`: the codec as a speechtok tokenizer (what the CLI and `speechtok.load` see).

Frames: an item of ``L`` samples gives ``ceil(L / hop)`` frames; its audio is zero-padded to a
whole number of frames (exactly what a stream's ``flush`` does), so a padded batch gives, frame
for frame, the per-item codes (the model is causal: padding after an item never reaches its
frames). Long inputs are processed in windows of ``cfg.window_frames`` frames with the streaming
state carried over, so memory stays constant with duration and the result is the streamed one.

Saved form: a speechtok model directory (``config.json`` kind ``"codec"`` + ``model.safetensors``).
``model_id`` is ``name@<sha256 of the weights' content>`` (tensor names, dtypes, shapes, bytes),
the same before and after save/load or import.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Union

import torch

from speechtok.codes import Codes
from speechtok.protocol import BaseTokenizer, Waveform, length_mask

from .build import build_codec
from .config import CodecConfig, config_from_dict
from .model import CodecModel
from .streaming import CodecStream


def state_dict_sha256(state_dict: dict) -> str:
    """Content hash of a state dict (sorted names; name, dtype, shape and bytes of each tensor)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()


class CodecTokenizer(BaseTokenizer):
    """A streaming codec tokenizer.

    Args:
        model: the `CodecModel`.
        name: model name (first half of ``model_id``).
        weights_hash: sha256 of the weights' content (computed when None).
    """

    def __init__(self, model: CodecModel, name: Optional[str] = None, weights_hash: Optional[str] = None):
        super().__init__()
        self.model = model.eval()
        cfg = model.cfg
        self.cfg = cfg
        self.name = name or cfg.name
        self.sample_rate = int(cfg.sample_rate)
        self.channels = int(cfg.channels)
        self.frame_rate = float(cfg.frame_rate)
        self.hop_length = int(cfg.hop_length)
        self.codebook_sizes = (cfg.quantizer.codebook_size,) * cfg.quantizer.n_q
        self.n_semantic = int(cfg.quantizer.n_semantic)
        self._weights_hash = weights_hash

    @classmethod
    def from_config(cls, cfg: CodecConfig, name: Optional[str] = None, seed: Optional[int] = None) -> "CodecTokenizer":
        """A randomly initialised codec (``seed`` makes it reproducible)."""
        if seed is not None:
            torch.manual_seed(seed)
        return cls(build_codec(cfg), name=name)

    @property
    def weights_hash(self) -> str:  # type: ignore[override]
        if self._weights_hash is None:
            self._weights_hash = state_dict_sha256(self.model.state_dict())
        return self._weights_hash

    # ------------------------------------------------------------------ streaming
    def stream(self, batch_size: int = 1, n_q: Optional[int] = None) -> CodecStream:
        """A streaming session (a context manager): ``with tok.stream(B) as s: s.encode(chunk)``."""
        return CodecStream(self.model, batch_size, n_q, window_frames=self.cfg.window_frames)

    # ------------------------------------------------------------------ offline
    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of items of ``lengths`` samples: ``ceil(lengths / hop)``."""
        return (lengths + self.hop_length - 1) // self.hop_length

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> Codes:
        B, C, S = wav.shape
        frames = self.num_frames(lengths)
        T = int(frames.max()) if B else 0
        wav = wav[..., : T * self.hop_length]
        if wav.shape[-1] < T * self.hop_length:
            wav = torch.nn.functional.pad(wav, (0, T * self.hop_length - wav.shape[-1]))
        with self.stream(B) as s:  # windows of cfg.window_frames frames, state carried over
            codes = s.encode(wav)
        return self.make_codes(codes, frames, audio_lengths=lengths.clone())

    def _decode(self, codes: Codes) -> Waveform:
        c = codes.codes.clamp(min=0)
        if codes.durations is not None:
            raise ValueError("codes with durations (deduplicated/BPE) must be expanded before decoding")
        with self.stream(c.shape[0]) as s:
            audio = s.decode(c)
        lengths = codes.lengths * self.hop_length
        if codes.audio_lengths is not None:
            lengths = torch.minimum(lengths, codes.audio_lengths.to(lengths.device))
        audio = audio * length_mask(lengths, audio.shape[-1])[:, None, :]
        if lengths.numel():
            audio = audio[..., : int(lengths.max())]
        return Waveform(audio=audio.contiguous(), lengths=lengths, sample_rate=self.sample_rate)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Union[str, Path]) -> Path:
        """Write a speechtok model directory (atomic); `speechtok.load(directory)` reads it back."""
        from speechtok.registry import save_model_dir

        return save_model_dir(directory, kind="codec", name=self.name, config=self.cfg.to_dict(),
                              state_dict=self.model.state_dict())


def load_codec_dir(directory: Path, meta: dict, device: str = "cpu") -> CodecTokenizer:
    """Registry loader for kind ``"codec"``: build from ``meta["config"]`` and load the weights."""
    from speechtok.registry import WEIGHTS_FILE, ModelLoadError

    try:
        cfg = config_from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{Path(directory) / 'config.json'}: invalid codec config ({e})") from e
    model = build_codec(cfg)
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"{directory}: missing weights file, expected {path}")
    try:
        copy_safetensors_into(model, [path], lambda name: (name, None))
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"{path}: weights do not fit the config ({e})") from e
    return CodecTokenizer(model.to(device).eval(), name=meta.get("name") or cfg.name)


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _safetensors_header(f) -> tuple[dict, int]:
    """Parse a safetensors header (u64 little-endian length + JSON): (entries, data offset)."""
    import json
    import struct

    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError("truncated file (no safetensors header)")
    (n,) = struct.unpack("<Q", raw)
    if n > 100_000_000:
        raise ValueError(f"implausible safetensors header length {n}")
    header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def copy_safetensors_into(model: torch.nn.Module, files: list, rename) -> None:
    """Read weights from safetensors ``files`` straight into ``model``'s tensors, one at a time,
    with plain reads (no mmap: peak memory is the model, not the model plus the file).

    ``rename(name) -> (target_name, rows)`` maps a stored name to a state-dict entry and an
    optional ``slice`` of its first dimension (used to stack q/k/v into one projection), or
    ``(None, None)`` to skip. Raises ValueError naming missing, unexpected or misshapen tensors.
    """
    targets = model.state_dict(keep_vars=True)
    filled: dict[str, int] = {}
    unexpected = []
    with torch.no_grad():
        for path in files:
            with open(path, "rb") as f:
                try:
                    header, base = _safetensors_header(f)
                except (ValueError, UnicodeDecodeError) as e:
                    raise ValueError(f"{path}: not a safetensors file ({e})") from e
                for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                    target, rows = rename(name)
                    if target is None:
                        continue
                    if target not in targets:
                        unexpected.append(name)
                        continue
                    dst = targets[target].data
                    view = dst if rows is None else dst[rows]
                    shape, dtype = tuple(entry["shape"]), _ST_DTYPES.get(entry["dtype"])
                    if dtype is None or shape != tuple(view.shape):
                        raise ValueError(f"{name}: {entry['dtype']} {shape} does not fit {target} "
                                         f"{view.dtype} {tuple(view.shape)}")
                    start, end = entry["data_offsets"]
                    f.seek(base + start)
                    if dtype == view.dtype and view.is_contiguous() and view.device.type == "cpu" and view.numel():
                        got = f.readinto(memoryview(view.reshape(-1).view(torch.uint8).numpy()))
                    else:
                        buf = bytearray(end - start)
                        got = f.readinto(buf)
                        if view.numel():
                            view.copy_(torch.frombuffer(buf, dtype=dtype).reshape(shape))
                    if got != end - start:
                        raise ValueError(f"{path}: truncated data for {name}")
                    filled[target] = filled.get(target, 0) + _rows(view)
    missing = [k for k, v in targets.items() if filled.get(k, 0) < _rows(v)]
    if missing or unexpected:
        raise ValueError(f"missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                         f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}")
    # Run the modules' load hooks (they drop caches derived from the old values); the tensors
    # alias the model's own, so this copies nothing new.
    model.load_state_dict(model.state_dict(), strict=True)


def _rows(t: torch.Tensor) -> int:
    return int(t.shape[0]) if t.dim() else 1
