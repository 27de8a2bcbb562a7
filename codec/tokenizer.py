"""`CodecTokenizer`: the codec as a speechtok tokenizer (what the CLI and `speechtok.load` see).

Frames: an item of ``L`` samples gives ``ceil(L / hop)`` frames; its audio is zero-padded to a
whole number of frames (exactly what a stream's ``flush`` does). Each item of a padded batch runs
alone (`CodecTokenizer._encode`), so its codes are the per-item codes bitwise. Long inputs are processed in windows of ``cfg.window_frames`` frames with the streaming
state carried over, so memory stays constant with duration and the result is the streamed one.

Saved form: a speechtok model directory (``config.json`` kind ``"codec"`` + ``model.safetensors``).
``model_id`` is ``name@<sha256 of the weights' content (tensor names, dtypes, shapes, bytes) and
the whole config>``, the same before and after save/load or import; a copy with another sample
rate, context or window gets another id.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Union

import torch

from speechtok.codes import Codes
from speechtok.formats import read_safetensors_header
from speechtok.protocol import BaseTokenizer, Waveform, as_audio_tensor, length_mask, prepare_audio

from .build import build_codec
from .config import CodecConfig, config_from_dict
from .model import CodecModel
from .streaming import CodecStream


def _hash_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy


def state_dict_sha256(state_dict: dict, deferred: Optional[dict] = None) -> str:
    """Content hash of a state dict (sorted names; name, dtype, shape and bytes of each tensor).

    ``deferred`` (from `copy_safetensors_into`) gives the file locations of tensors left on the
    meta device (an encode-only model's decoder): they are read one at a time, so the hash is the
    full model's without holding its decoder in memory."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if t.is_meta:
            if deferred is None or name not in deferred:
                raise ValueError(f"{name} is on the meta device and no file location is known for it")
            buf = torch.empty(tuple(t.shape), dtype=t.dtype)
            for path, base, entry, rows in deferred[name]:
                with open(path, "rb") as f:
                    _read_entry(f, path, base, name, entry, buf if rows is None else buf[rows])
            t = buf
        _hash_tensor(h, name, t)
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
        # True: each item of a padded batch runs alone (bitwise the per-item codes, at any size).
        # False: one padded batch through the model (for GPUs, where batching pays; codes then
        # equal per-item codes only up to near-ties, see `code_margins`).
        self.per_item_batches = True

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
    def stream(self, batch_size: int = 1, n_q: Optional[int] = None, aligned: bool = False) -> CodecStream:
        """A streaming session (a context manager): ``with tok.stream(B) as s: s.encode(chunk)``.
        ``aligned=True``: codes bitwise equal to ``encode`` for any chunking, frames held back until
        their ``cfg.window_frames`` window is complete (see `CodecStream`)."""
        return CodecStream(self.model, batch_size, n_q, window_frames=self.cfg.window_frames, aligned=aligned)

    def with_window_frames(self, window_frames: int) -> "CodecTokenizer":
        """The same model with another ``cfg.window_frames`` (frames per model call offline, and
        the latency an aligned stream adds). Codes can differ at near-ties, so the copy has its
        own ``model_id``."""
        import dataclasses

        cfg = dataclasses.replace(self.cfg, window_frames=int(window_frames))
        other = CodecTokenizer(self.model, name=self.name, weights_hash=self._weights_hash)
        other.cfg = cfg
        other.per_item_batches = self.per_item_batches
        return other

    @property
    def can_decode(self) -> bool:
        return self.model.has_decoder

    def identity_config(self) -> dict:
        """The whole `CodecConfig`: rates, context and window change codes as much as weights do."""
        return self.cfg.to_dict()

    @torch.inference_mode()
    def encode_file(self, path: Union[str, Path], num_codebooks: Optional[int] = None,
                    block_seconds: float = 30.0) -> Codes:
        """Encode an audio file of any length in bounded memory: read (and resample) it in blocks
        of ``block_seconds`` and feed them through a stream.

        The codes equal ``encode`` of the whole file (``load_audio`` at the model's rate) bitwise,
        by construction: the blocks equal the whole file's samples (`iter_audio_blocks`), and they
        are regrouped into the pieces the offline path runs (``window_frames`` frames each, the last
        zero-padded to whole frames), so every model call has the same input
        and shape. Memory does not grow with the file's duration.

        Returns `Codes` ``[1, K, T]`` with ``audio_lengths`` set. Raises `AudioError` naming the file.
        """
        from speechtok.audio import fit_channels, iter_audio_blocks, rechunk

        total = 0

        def blocks():
            nonlocal total
            for b in iter_audio_blocks(path, self.sample_rate, mono=self.channels == 1, block_seconds=block_seconds):
                total += b.shape[-1]
                yield fit_channels(path, b, self.channels)

        parts = []
        with self.stream(1, num_codebooks) as s:
            for piece in rechunk(blocks(), self.cfg.window_frames * self.hop_length):
                pad = -piece.shape[-1] % self.hop_length  # only the last piece can be short
                parts.append(s.encode(torch.nn.functional.pad(piece, (0, pad))[None] if pad else piece[None]))
            parts.append(s.flush())  # nothing pending: every piece is whole frames
        lengths = torch.tensor([total])
        return self.make_codes(torch.cat(parts, dim=-1).cpu(), self.num_frames(lengths), audio_lengths=lengths)

    # ------------------------------------------------------------------ offline
    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of items of ``lengths`` samples: ``ceil(lengths / hop)``."""
        return (lengths + self.hop_length - 1) // self.hop_length

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> Codes:
        """Each item runs alone, on its own frames (`_encode_items`): its codes are those of
        encoding it by itself, bitwise, whatever else is in the batch. A padded batch through
        the model would not give that at every size: matrix kernels pick their blocking from
        the whole shape, so an item's float rounding depends on its batch-mates and on the
        padded length, and at Mimi's 32 codebooks such differences flip near-tie codes
        (`code_margins`). On CPU the per-item loop is also the faster one at Mimi's size: no
        padded frames are computed (benchmarks/exactness.py)."""
        if not self.per_item_batches:
            return self._encode_padded(wav, lengths)
        return self._encode_items(wav, lengths)[0]

    def _encode_padded(self, wav: torch.Tensor, lengths: torch.Tensor) -> Codes:
        """The whole padded batch through one stream (``per_item_batches = False``)."""
        frames = self.num_frames(lengths)
        T = int(frames.max()) if wav.shape[0] else 0
        with self.stream(wav.shape[0]) as s:
            codes = s.encode(self._whole_frames(wav, T))
        return self.make_codes(codes, frames, audio_lengths=lengths.clone())

    def _whole_frames(self, wav: torch.Tensor, frames: int) -> torch.Tensor:
        """``wav`` cut or zero-padded to ``frames * hop`` samples (what a stream's flush does)."""
        S = frames * self.hop_length
        wav = wav[..., :S]
        return torch.nn.functional.pad(wav, (0, S - wav.shape[-1])) if wav.shape[-1] < S else wav

    def _encode_items(self, wav: torch.Tensor, lengths: torch.Tensor, margins: bool = False):
        """Items of a padded batch ``[B, C, S]`` one at a time, each through its own stream on its
        own whole frames -> ``(Codes, margins [B, K, T] or None)``, -1 / NaN past each item."""
        frames = self.num_frames(lengths)
        B, K = wav.shape[0], self.model.cfg.quantizer.n_q
        T = int(frames.max()) if B else 0
        codes = torch.full((B, K, T), -1, dtype=torch.long, device=wav.device)
        gaps = torch.full((B, K, T), float("nan"), device=wav.device) if margins else None
        for i in range(B):
            n = int(frames[i])
            if not n:
                continue
            with self.stream(1) as s:
                out = s.encode(self._whole_frames(wav[i:i + 1], n), margins=margins)
            if margins:
                codes[i, :, :n], gaps[i, :, :n] = out[0][0], out[1][0]
            else:
                codes[i, :, :n] = out[0]
        return self.make_codes(codes, frames, audio_lengths=lengths.clone()), gaps

    @torch.inference_mode()
    def code_margins(self, audio: torch.Tensor, sample_rate: int, lengths: Optional[torch.Tensor] = None):
        """Codes and how close each one was to a tie: ``(Codes, margins)``, margins float
        ``[B, K, T]`` (`kmeans.code_margins`; NaN at padding), from the model calls ``encode``
        makes. A code with a margin near float rounding (below ~1e-5) may differ when the same
        audio is streamed in other chunks or computed on other hardware; codes above it do not
        move. Inputs as for ``encode``."""
        wav, lengths = prepare_audio(as_audio_tensor(audio).to(self.device), sample_rate, self.sample_rate,
                                     self.channels, lengths)
        return self._encode_items(wav, lengths, margins=True)

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

        if not self.model.has_decoder:
            raise RuntimeError(f"{self.name} was loaded for encoding only (encoder_only=True); "
                               "load it in full to save it")
        return save_model_dir(directory, kind="codec", name=self.name, config=self.cfg.to_dict(),
                              state_dict=self.model.state_dict())


def load_codec_dir(directory: Path, meta: dict, device: str = "cpu", encoder_only: bool = False) -> CodecTokenizer:
    """Registry loader for kind ``"codec"``: build from ``meta["config"]`` and load the weights
    (``encoder_only``: skip the decoder's; `CodecTokenizer.decode` then raises)."""
    from speechtok.registry import WEIGHTS_FILE, ModelLoadError

    try:
        cfg = config_from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{Path(directory) / 'config.json'}: invalid codec config ({e})") from e
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"{directory}: missing weights file, expected {path}")
    try:
        return load_codec_weights(cfg, [path], lambda name: (name, None), meta.get("name") or cfg.name,
                                  device, encoder_only)
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"{path}: weights do not fit the config ({e})") from e


def load_codec_weights(cfg: CodecConfig, files: list, rename, name: str, device="cpu",
                       encoder_only: bool = False) -> CodecTokenizer:
    """Build ``cfg`` and read its weights from safetensors ``files`` (`copy_safetensors_into`);
    ``encoder_only`` leaves the decoder on the meta device, its bytes hashed from the files so
    ``model_id`` is the full model's. Raises ValueError for weights that do not fit."""
    model = build_codec(cfg, decoder=not encoder_only)
    deferred = copy_safetensors_into(model, files, rename)
    weights_hash = state_dict_sha256(model.state_dict(), deferred) if deferred else None
    return CodecTokenizer(model_to(model, device).eval(), name=name, weights_hash=weights_hash)


def model_to(model: CodecModel, device) -> CodecModel:
    """``model.to(device)``. An encode-only model keeps its meta (decoder) tensors and has its
    codebook tables frozen (`freeze_for_inference`: the EMA sums they come from are freed)."""
    if model.has_decoder:
        return model.to(device)
    for name, child in model.named_children():
        if child is not None and name not in ("decoder", "decoder_transformer", "upsample"):
            child.to(device)
    model.eval()
    for m in model.quantizer.modules():
        if hasattr(m, "freeze_for_inference"):
            m.freeze_for_inference()
    return model


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _read_entry(f, path, base: int, name: str, entry: dict, view: torch.Tensor) -> None:
    """Read one safetensors ``entry`` (header item) into ``view`` (checked for dtype and shape)."""
    shape, dtype = tuple(entry["shape"]), _ST_DTYPES.get(entry["dtype"])
    if dtype is None or shape != tuple(view.shape):
        raise ValueError(f"{name}: {entry['dtype']} {shape} does not fit {view.dtype} {tuple(view.shape)}")
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


def copy_safetensors_into(model: torch.nn.Module, files: list, rename) -> dict[str, list]:
    """Read weights from safetensors ``files`` straight into ``model``'s tensors, one at a time,
    with plain reads (no mmap: peak memory is the model, not the model plus the file).

    ``rename(name) -> (target_name, rows)`` maps a stored name to a state-dict entry and an
    optional ``slice`` of its first dimension (used to stack q/k/v into one projection), or
    ``(None, None)`` to skip. Raises ValueError naming missing, unexpected or misshapen tensors.
    Targets on the meta device (an encode-only model's decoder) are shape-checked, not read;
    the return value maps each of them to its file locations (for `state_dict_sha256`).
    """
    targets = model.state_dict(keep_vars=True)
    filled: dict[str, int] = {}
    deferred: dict[str, list] = {}
    unexpected = []
    with torch.no_grad():
        for path in files:
            with open(path, "rb") as f:
                try:
                    header, base = read_safetensors_header(f)
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
                    if dst.is_meta:
                        if tuple(entry["shape"]) != tuple(view.shape) or entry["dtype"] not in _ST_DTYPES:
                            raise ValueError(f"{name}: {entry['dtype']} {tuple(entry['shape'])} does not fit "
                                             f"{target} {tuple(view.shape)}")
                        deferred.setdefault(target, []).append((path, base, entry, rows))
                    else:
                        _read_entry(f, path, base, name, entry, view)
                    filled[target] = filled.get(target, 0) + _rows(view)
    missing = [k for k, v in targets.items() if filled.get(k, 0) < _rows(v)]
    if missing or unexpected:
        raise ValueError(f"missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                         f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}")
    # Run the modules' load hooks (they drop caches derived from the old values); the tensors
    # alias the model's own, so this copies nothing new.
    model.load_state_dict({k: v for k, v in model.state_dict().items() if not v.is_meta}, strict=False)
    return deferred


def _rows(t: torch.Tensor) -> int:
    return int(t.shape[0]) if t.dim() else 1
