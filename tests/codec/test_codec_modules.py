"""Streaming building blocks: every module streamed in random chunks equals its offline output."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from speechtok.codec.config import SEANetConfig, TransformerConfig
from speechtok.codec.modules.conv import StreamingConv1d, StreamingConvTranspose1d
from speechtok.codec.modules.seanet import SEANetDecoder, SEANetEncoder
from speechtok.codec.modules.transformer import StreamingTransformer


pytestmark = pytest.mark.usefixtures("one_thread")


def _chunks(total: int, rng: random.Random, sizes=(0, 1, 1, 2, 3, 5, 8, 13)) -> list[tuple[int, int]]:
    out, i = [], 0
    while i < total:
        n = rng.choice(sizes)
        out.append((i, min(total, i + n)))
        i += n
    return out


def _stream(module, x: torch.Tensor, rng: random.Random, sizes=(0, 1, 1, 2, 3, 5, 8, 13)) -> torch.Tensor:
    state = module.init_state(x.shape[0])
    return torch.cat([module(x[..., a:b], state) for a, b in _chunks(x.shape[-1], rng, sizes)], dim=-1)


@pytest.mark.parametrize("kernel,stride,dilation,pad_mode", [(7, 1, 1, "constant"), (3, 1, 4, "constant"),
                                                             (8, 4, 1, "constant"), (4, 2, 1, "replicate"),
                                                             (1, 1, 1, "constant")])
def test_conv_streamed_equals_offline(kernel, stride, dilation, pad_mode):
    torch.manual_seed(0)
    conv = StreamingConv1d(3, 5, kernel, stride=stride, dilation=dilation, pad_mode=pad_mode)
    x = torch.randn(2, 3, 12 * stride)
    offline = conv(x)
    assert offline.shape == (2, 5, 12)
    for seed in range(3):
        torch.testing.assert_close(_stream(conv, x, random.Random(seed)), offline, rtol=1e-6, atol=1e-6)


def test_conv_is_causal_and_pads_as_documented():
    torch.manual_seed(0)
    conv = StreamingConv1d(1, 1, 4, stride=2, pad_mode="replicate", bias=False)
    x = torch.randn(1, 1, 10)
    y = conv(x)
    # frame t sees x[2t-2 : 2t+2] with x[-2:0] replaced by x[0] (replicate padding)
    padded = torch.cat([x[..., :1], x[..., :1], x], dim=-1)
    ref = torch.stack([(padded[0, 0, 2 * t:2 * t + 4] * conv.conv.weight[0, 0]).sum() for t in range(5)])
    torch.testing.assert_close(y[0, 0], ref)
    x2 = x.clone()
    x2[..., 6:] += 1.0  # the future changes: frames that only saw samples < 6 stay equal
    assert torch.equal(conv(x2)[..., :3], y[..., :3])


@pytest.mark.parametrize("kernel,stride,groups", [(6, 3, 1), (4, 2, 2), (5, 2, 1)])
def test_conv_transpose_streamed_equals_offline_and_trims_like_hf(kernel, stride, groups):
    torch.manual_seed(0)
    tr = StreamingConvTranspose1d(4, 4, kernel, stride=stride, groups=groups)
    x = torch.randn(2, 4, 9)
    offline = tr(x)
    full = torch.nn.functional.conv_transpose1d(x, tr.conv.weight, tr.conv.bias, stride=stride, groups=groups)
    torch.testing.assert_close(offline, full[..., :9 * stride])  # HF: trim kernel - stride on the right
    for seed in range(3):
        torch.testing.assert_close(_stream(tr, x, random.Random(seed)), offline, rtol=1e-6, atol=1e-6)


def test_seanet_encoder_decoder_streamed_equals_offline():
    torch.manual_seed(0)
    cfg = SEANetConfig(dimension=8, n_filters=4, ratios=(4, 2), kernel_size=5, n_residual_layers=2)
    enc, dec = SEANetEncoder(cfg), SEANetDecoder(cfg)
    x = torch.randn(2, 1, 8 * 11)
    z = enc(x)
    assert z.shape == (2, 8, 11)
    torch.testing.assert_close(_stream(enc, x, random.Random(1), sizes=(1, 3, 7, 8, 20)), z, rtol=1e-5, atol=1e-6)
    y = dec(z)
    assert y.shape == (2, 1, 88)
    torch.testing.assert_close(_stream(dec, z, random.Random(2), sizes=(0, 1, 2, 3)), y, rtol=1e-5, atol=1e-6)


def _naive_attention_reference(tr: StreamingTransformer, x: torch.Tensor) -> torch.Tensor:
    """Per-query loop: softmax over keys in the window (independent of the module's masking code)."""
    cfg = tr.cfg
    B, T, D = x.shape
    H, hd = cfg.num_heads, D // cfg.num_heads
    pos = torch.arange(T)[None].expand(B, T)
    cos, sin = tr.rope.cos_sin(pos)
    for layer in tr.layers:
        h = layer.input_layernorm(x)
        q, k, v = layer.self_attn.in_proj(h).view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
        half = hd // 2
        rot = lambda t: torch.cat([-t[..., half:], t[..., :half]], -1)  # noqa: E731
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        out = torch.zeros(B, H, T, hd)
        for t in range(T):
            lo = max(0, t - cfg.context + 1)
            w = torch.softmax(q[:, :, t:t + 1] @ k[:, :, lo:t + 1].transpose(-1, -2) / hd ** 0.5, dim=-1)
            out[:, :, t] = (w @ v[:, :, lo:t + 1])[:, :, 0]
        x = x + layer.self_attn_layer_scale(layer.self_attn.out_proj(out.transpose(1, 2).reshape(B, T, D)))
        x = x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
    return x


def test_transformer_window_and_kv_cache():
    torch.manual_seed(0)
    tr = StreamingTransformer(TransformerConfig(d_model=16, num_heads=2, num_layers=2, dim_feedforward=24,
                                                context=4, layer_scale=1.0)).eval()
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        offline = tr(x)  # T > context: exercises the window mask
        torch.testing.assert_close(offline, _naive_attention_reference(tr, x), rtol=1e-5, atol=1e-5)
        short = tr(x[:, :3])  # T <= context: the plain causal path
        torch.testing.assert_close(short, offline[:, :3], rtol=1e-5, atol=1e-5)
        for seed in range(3):
            state = tr.init_state(2)
            parts = [tr(x[:, a:b], state) for a, b in _chunks(13, random.Random(seed), sizes=(0, 1, 2, 5))]
            torch.testing.assert_close(torch.cat(parts, 1), offline, rtol=1e-5, atol=1e-5)
            assert state.cached <= tr.cfg.context - 1  # bounded cache


def test_transformer_kv_buffer_long_stream():
    """Hundreds of frames in mixed chunk sizes: the KV buffers are compacted (every ~64 frames)
    and grown (a 90-frame chunk) along the way; outputs still match offline and memory stays bounded."""
    torch.manual_seed(0)
    tr = StreamingTransformer(TransformerConfig(d_model=16, num_heads=2, num_layers=2, dim_feedforward=24,
                                                context=5, layer_scale=1.0)).eval()
    x = torch.randn(2, 400, 16)
    with torch.no_grad():
        offline = tr(x)
        state = tr.init_state(2)
        starts, caps, parts = [], set(), []
        for a, b in _chunks(400, random.Random(1), sizes=(1, 1, 2, 3, 7, 90)):
            parts.append(tr(x[:, a:b], state))
            starts.append(state.start)
            caps.add(state.keys[0].shape[2])
            assert state.cached == min(b, 4)
            assert state.keys[0].shape[2] <= 4 + max(90, 64)
    torch.testing.assert_close(torch.cat(parts, 1), offline, rtol=1e-5, atol=1e-5)
    compactions = sum(b < a for a, b in zip(starts, starts[1:]))
    assert compactions >= 3 and len(caps) >= 2  # the cache was moved to the front, and the buffers grew


def test_transformer_reset_one_item():
    torch.manual_seed(0)
    tr = StreamingTransformer(TransformerConfig(d_model=8, num_heads=2, num_layers=1, dim_feedforward=8,
                                                context=3, layer_scale=1.0)).eval()
    a, b = torch.randn(2, 5, 8), torch.randn(2, 4, 8)
    with torch.no_grad():
        state = tr.init_state(2)
        tr(a, state)
        state.reset(torch.tensor([True, False]))
        out = tr(b, state)
        torch.testing.assert_close(out[0], tr(b[:1])[0], rtol=1e-5, atol=1e-5)  # restarted
        torch.testing.assert_close(out[1], tr(torch.cat([a, b], 1)[1:])[0, 5:], rtol=1e-5, atol=1e-5)


def test_inference_table_cache_is_bitwise_and_follows_weight_updates():
    """Codebook tables cached for inference give the uncached codes/latents bitwise, and an
    in-place codebook update invalidates them."""
    import copy

    from speechtok.codec import build_codec, preset

    torch.manual_seed(0)
    model = build_codec(preset("tiny")).eval()
    q = model.quantizer
    cb = q.acoustic_rvq.layers[0].codebook

    def uncached(fn, *args):
        ref = copy.deepcopy(q)  # a deep copy drops nothing but shares no cache state either
        for m in ref.modules():
            m.__dict__.pop("_lookup_cache", None)
        with torch.enable_grad():  # the cache is only used without autograd
            return getattr(ref, fn)(*args)

    with torch.no_grad():
        small = torch.randn(1, 16, 4)  # the first inference call builds the cache
        assert torch.equal(q.encode(small), uncached("encode", small))
        assert "_lookup_cache" in cb.__dict__
        z = torch.randn(3, 16, 11)  # later calls use it
        codes = q.encode(z)
        assert torch.equal(codes, uncached("encode", z))
        assert torch.equal(q.encode(z, None, 2), uncached("encode", z, None, 2))
        assert torch.equal(q.decode(codes), uncached("decode", codes).detach())
        cb.embed_sum.mul_(-1.0)  # an in-place codebook update must invalidate the cached tables
        assert torch.equal(q.encode(z), uncached("encode", z))
        assert torch.equal(q.decode(codes), uncached("decode", codes).detach())
    trained = build_codec(preset("tiny")).train().quantizer
    with torch.no_grad():
        trained.encode(torch.randn(4, 16, 32))  # training mode never caches (tables change every step)
    assert all("_lookup_cache" not in m.__dict__ for m in trained.modules())



@pytest.mark.parametrize("cin,cout,kernel,stride", [(1, 8, 7, 1), (8, 1, 3, 1), (8, 2, 5, 1), (256, 32, 8, 4),
                                                     (128, 16, 12, 6), (1024, 8, 3, 1), (768, 16, 3, 1)])
def test_cpu_inference_conv_paths_match_the_convolution(cin, cout, kernel, stride):
    """The CPU inference paths (unfold + GEMM, per-tap GEMM) give the convolution's outputs for
    offline calls and for any chunking, including 1-sample chunks and short low-rate calls."""
    torch.manual_seed(0)
    conv = StreamingConv1d(cin, cout, kernel, stride=stride)
    x = torch.randn(2, cin, stride * 40)
    with torch.no_grad():
        ref = conv.conv(F.pad(x, (conv.context, 0)))
    paths = set()
    for chunks in ([x.shape[-1]], [1] * x.shape[-1], [stride * 3, 7, stride * 20, 1]):
        state, outs, i = conv.init_state(2), [], 0
        for c in chunks + [x.shape[-1] - sum(chunks)]:
            with torch.inference_mode():
                paths.add(conv._cpu_path(x, c // stride))
                outs.append(conv(x[..., i:i + c], state))
            i += c
        torch.testing.assert_close(torch.cat(outs, -1), ref, rtol=1e-5, atol=1e-5)
    assert paths - {None}, "no fast path exercised"


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_cpu_inference_transposed_conv_matches(stride):
    torch.manual_seed(0)
    ct = StreamingConvTranspose1d(32, 8, 2 * stride, stride=stride)
    x = torch.randn(2, 32, 40)
    with torch.no_grad():
        ref = ct.conv(x)[..., :40 * stride]
    for chunks in ([40], [1] * 40, [9, 1, 20, 10]):
        state, outs, i = ct.init_state(2), [], 0
        for c in chunks:
            with torch.inference_mode():
                outs.append(ct(x[..., i:i + c], state))
            i += c
        torch.testing.assert_close(torch.cat(outs, -1), ref, rtol=1e-5, atol=1e-5)


def test_inference_elu_matches_torch_elu():
    from speechtok.codec.modules.seanet import ELU

    x = torch.cat([torch.randn(10000) * 4, torch.linspace(-30, 5, 10000), torch.randn(1000) * 1e-6,
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, -100.0])])
    ref = torch.nn.functional.elu(x)
    with torch.no_grad():
        fast = ELU()(x)
        inplace = x.clone()
        out = ELU(inplace=True)(inplace)
    assert out.data_ptr() == inplace.data_ptr() and torch.equal(out, fast)
    assert (fast - ref).abs().max() <= 1.2e-7 and torch.equal(fast[x > 0], x[x > 0])
    y = x.clone().requires_grad_()
    assert torch.equal(ELU()(y), ref)  # with autograd: torch's own ELU (training numerics unchanged)
