"""Streaming building blocks of the codec: causal convs, SEANet, transformer, resampling.

Each module runs offline with ``forward(x)`` and streaming with ``forward(x, state)`` where the
state comes from ``module.init_state(batch_size)`` (one code path for both).
"""
