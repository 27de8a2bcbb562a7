"""CTranslate2 Whisper ``model.bin``: a bounded reader of its binary format and the mapping of its
WhisperSpec variables to OpenAI parameter names (used by `speechtok.units.whisper.load`).

Layout (CTranslate2 ``specs/model_spec.py``, little-endian): uint32 version, string spec name,
uint32 revision, uint32 count, then per variable: string name, uint8 rank, uint32 x rank shape,
uint8 dtype id, uint32 byte count, raw bytes; then uint32 alias count and (alias, target) strings.
Strings are uint16 length (including a trailing NUL) + UTF-8. Nothing is unpickled.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Union

import torch

from speechtok.formats import safe_text
from speechtok.units.features.base import FeatureError

from .model import WhisperDims

PathLike = Union[str, os.PathLike]

CT2_VERSIONS = (6,)
CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
MAX_CT2_VARIABLES = 1 << 16
MAX_RANK = 8
MAX_FILE_BYTES = 1 << 40
GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU


class WhisperLoadError(FeatureError):
    """A Whisper checkpoint that cannot be read (the message names the file and the problem)."""


# ------------------------------------------------------------------ CTranslate2 model.bin
class _Reader:
    """Bounded little-endian reads from ``f`` (``size`` bytes) that raise naming ``path``."""

    def __init__(self, f, size: int, path):
        self.f, self.size, self.path = f, size, path

    def take(self, n: int, what: str) -> bytes:
        pos = self.f.tell()
        if n < 0 or pos + n > self.size:
            raise WhisperLoadError(f"{self.path}: truncated CTranslate2 model.bin ({what} needs {n} bytes at "
                                   f"offset {pos}, file has {self.size})")
        return self.f.read(n)

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", f"{what} length")
        raw = self.take(n, what)
        if n == 0 or raw[-1] != 0:
            raise WhisperLoadError(f"{self.path}: corrupt CTranslate2 model.bin ({what} at offset "
                                   f"{self.f.tell() - n} is not NUL-terminated)")
        try:
            s = raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            s = None
        if s is None or not s.isprintable():
            raise WhisperLoadError(f"{self.path}: corrupt CTranslate2 model.bin ({what} "
                                   f"{safe_text(raw[:40])} is not printable UTF-8)")
        return s


def read_ct2_model_bin(path: PathLike) -> tuple[str, dict[str, torch.Tensor], dict[str, str]]:
    """``model.bin`` -> (spec name, ``{name: tensor}``, ``{alias: name}``); every size checked
    against the file before anything is allocated."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise WhisperLoadError(f"{path}: cannot read ({e.strerror or e})") from None
    if size > MAX_FILE_BYTES:
        raise WhisperLoadError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES}-byte limit")
    with open(path, "rb") as f:
        r = _Reader(f, size, path)
        version = r.unpack("I", "binary version")
        if version not in CT2_VERSIONS:
            raise WhisperLoadError(f"{path}: CTranslate2 binary version {version} is not supported "
                                   f"(this reader knows {list(CT2_VERSIONS)})")
        spec = r.string("spec name")
        r.unpack("I", "spec revision")
        count = r.unpack("I", "variable count")
        if count > MAX_CT2_VARIABLES:
            raise WhisperLoadError(f"{path}: {count} variables is over the {MAX_CT2_VARIABLES} limit")
        variables: dict[str, torch.Tensor] = {}
        for i in range(count):
            name = r.string(f"variable {i} name")
            rank = r.unpack("B", f"{name!r} rank")
            if rank > MAX_RANK:
                raise WhisperLoadError(f"{path}: variable {name!r} has rank {rank} (max {MAX_RANK})")
            shape = tuple(r.unpack("I", f"{name!r} shape") for _ in range(rank))
            type_id = r.unpack("B", f"{name!r} dtype")
            if type_id not in CT2_DTYPES:
                raise WhisperLoadError(f"{path}: variable {name!r} has unknown dtype id {type_id}")
            dtype = CT2_DTYPES[type_id]
            nbytes = r.unpack("I", f"{name!r} byte count")
            numel = 1
            for d in shape:
                numel *= d
            if numel * dtype.itemsize != nbytes:
                raise WhisperLoadError(f"{path}: variable {name!r} of shape {list(shape)} and dtype "
                                       f"{str(dtype)[6:]} should have {numel * dtype.itemsize} bytes, "
                                       f"the file says {nbytes}")
            if name in variables:
                raise WhisperLoadError(f"{path}: variable {name!r} appears twice")
            raw = bytearray(r.take(nbytes, f"{name!r} data"))
            t = torch.frombuffer(raw, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
            variables[name] = t.reshape(shape)
        n_alias = r.unpack("I", "alias count")
        if n_alias > MAX_CT2_VARIABLES:
            raise WhisperLoadError(f"{path}: {n_alias} aliases is over the {MAX_CT2_VARIABLES} limit")
        aliases = {}
        for i in range(n_alias):
            alias, target = r.string(f"alias {i}"), r.string(f"alias {i} target")
            if target not in variables or alias in variables or alias in aliases:
                raise WhisperLoadError(f"{path}: alias {alias!r} -> {target!r} names a missing variable "
                                       f"or shadows one")
            aliases[alias] = target
        if f.tell() != size:
            raise WhisperLoadError(f"{path}: {size - f.tell()} unexpected bytes after the last alias")
    return spec, variables, aliases


def _dequantize(variables: dict[str, torch.Tensor], path) -> tuple[dict[str, torch.Tensor], set]:
    """Undo CTranslate2's int8 (per output row scale) / int16 (one scale) weight quantization."""
    out, kinds = {}, set()
    for name, t in variables.items():
        if name.endswith("_scale"):
            if name[: -len("_scale")] not in variables:
                raise WhisperLoadError(f"{path}: scale {name!r} has no variable to scale")
            continue
        scale = variables.get(name + "_scale")
        if t.dtype in (torch.int8, torch.int16) and t.dim() >= 2:
            if scale is None or not scale.is_floating_point():
                raise WhisperLoadError(f"{path}: quantized {name!r} has no float scale; cannot dequantize")
            if t.dtype == torch.int8 and tuple(scale.shape) != (t.shape[0],) or \
                    t.dtype == torch.int16 and scale.numel() != 1:
                raise WhisperLoadError(f"{path}: {name!r} scale of shape {list(scale.shape)} does not fit "
                                       f"{str(t.dtype)[6:]} weights {list(t.shape)}")
            s = scale.float().reshape(-1, *([1] * (t.dim() - 1))) if t.dtype == torch.int8 else scale.float()
            if not bool(torch.isfinite(s).all()) or bool((s == 0).any()):
                raise WhisperLoadError(f"{path}: {name!r} has zero or non-finite scales")
            out[name] = t.float() / s
            kinds.add(str(t.dtype)[6:])
        else:
            if scale is not None:
                raise WhisperLoadError(f"{path}: {name!r} has a scale but dtype {str(t.dtype)[6:]}")
            out[name] = t
            if t.is_floating_point():
                kinds.add(str(t.dtype)[6:])
    return out, kinds


def _ct2_to_openai(v: dict[str, torch.Tensor], path) -> tuple[WhisperDims, dict[str, torch.Tensor]]:
    """CTranslate2 WhisperSpec variables -> (dims, OpenAI-named state)."""
    used = set()

    def get(name, scalar=False):
        if name not in v:
            raise WhisperLoadError(f"{path}: CTranslate2 Whisper model lacks variable {name!r}")
        used.add(name)
        t = v[name]
        if scalar != (t.dim() == 0):
            raise WhisperLoadError(f"{path}: variable {name!r} of shape {list(t.shape)} should be "
                                   f"{'a scalar' if scalar else 'a tensor'}")
        return int(t) if scalar else t

    def layers(prefix):
        n = 0
        while any(k.startswith(f"{prefix}/layer_{n}/") for k in v):
            n += 1
        return n

    def linear(dst, src, state):
        state[dst + ".weight"] = get(src + "/weight")
        if src + "/bias" in v:
            state[dst + ".bias"] = get(src + "/bias")

    def norm(dst, src, state):
        state[dst + ".weight"], state[dst + ".bias"] = get(src + "/gamma"), get(src + "/beta")

    def split(t, parts, name):
        if t.shape[0] % parts:
            raise WhisperLoadError(f"{path}: fused {name!r} of {t.shape[0]} rows does not split in {parts}")
        return t.chunk(parts, dim=0)

    def attention(dst, src, state, fused_qkv):
        w, b = get(src + "/linear_0/weight"), get(src + "/linear_0/bias")
        if fused_qkv:
            (qw, kw, vw), (qb, _, vb) = split(w, 3, src + "/linear_0"), split(b, 3, src + "/linear_0")
            out = "linear_1"
        else:
            qw, qb = w, b
            (kw, vw), (_, vb) = split(get(src + "/linear_1/weight"), 2, src), split(get(src + "/linear_1/bias"), 2, src)
            out = "linear_2"
        # the key bias (zeros from the converter) shifts every score of a query equally: no effect
        state.update({f"{dst}.query.weight": qw, f"{dst}.query.bias": qb, f"{dst}.key.weight": kw,
                      f"{dst}.value.weight": vw, f"{dst}.value.bias": vb})
        linear(dst + ".out", f"{src}/{out}", state)
        norm(dst + "_ln", src + "/layer_norm", state)

    s: dict[str, torch.Tensor] = {}
    for side, n_layer in (("encoder", layers("encoder")), ("decoder", layers("decoder"))):
        if n_layer == 0:
            raise WhisperLoadError(f"{path}: CTranslate2 Whisper model has no {side} layers")
        for i in range(n_layer):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            attention(dst + ".attn", src + "/self_attention", s, True)
            if side == "decoder":
                attention(dst + ".cross_attn", src + "/attention", s, False)
            linear(dst + ".mlp.0", src + "/ffn/linear_0", s)
            linear(dst + ".mlp.2", src + "/ffn/linear_1", s)
            norm(dst + ".mlp_ln", src + "/ffn/layer_norm", s)
    for c in ("conv1", "conv2"):
        linear(f"encoder.{c}", f"encoder/{c}", s)
    s["encoder.positional_embedding"] = get("encoder/position_encodings/encodings")
    norm("encoder.ln_post", "encoder/layer_norm", s)
    s["decoder.token_embedding.weight"] = get("decoder/embeddings/weight")
    s["decoder.positional_embedding"] = get("decoder/position_encodings/encodings")
    norm("decoder.ln", "decoder/layer_norm", s)
    proj = get("decoder/projection/weight")
    if proj is not s["decoder.token_embedding.weight"] and not torch.equal(proj, s["decoder.token_embedding.weight"]):
        raise WhisperLoadError(f"{path}: the output projection is not tied to the token embedding (not Whisper)")
    expect = {"encoder/num_heads": None, "decoder/num_heads": None, "decoder/activation": GELU,
              "decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0}
    got = {}
    for k, want in expect.items():
        if k in v or want is None:
            got[k] = get(k, scalar=True)
            if want is not None and got[k] != want:
                raise WhisperLoadError(f"{path}: {k}={got[k]} is not Whisper's ({want})")
    # scalars that do not change Whisper's numbers here (alignment heads; ALiBi options, ALiBi being off)
    ignored = {"decoder/alignment_heads", "decoder/alignment_layer", "decoder/start_from_zero_embedding",
               "decoder/alibi_use_positive_positions", "decoder/scale_alibi"}
    extra = sorted(k for k in v if k not in used and k not in ignored)
    if extra:
        raise WhisperLoadError(f"{path}: unexpected CTranslate2 variables {safe_text(extra[:5], 160)}")
    D, Dt = s["encoder.conv1.weight"].shape[0], s["decoder.token_embedding.weight"].shape[1]
    dims = _dims(path, n_mels=s["encoder.conv1.weight"].shape[1], n_audio_ctx=s["encoder.positional_embedding"].shape[0],
                 n_audio_state=D, n_audio_head=got["encoder/num_heads"], n_audio_layer=layers("encoder"),
                 n_vocab=s["decoder.token_embedding.weight"].shape[0], n_text_ctx=s["decoder.positional_embedding"].shape[0],
                 n_text_state=Dt, n_text_head=got["decoder/num_heads"], n_text_layer=layers("decoder"))
    return dims, s


def _dims(path, **kw) -> WhisperDims:
    try:
        return WhisperDims(**{k: int(x) for k, x in kw.items()})
    except (ValueError, TypeError) as e:
        raise WhisperLoadError(f"{path}: {e}") from None
