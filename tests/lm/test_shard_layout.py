"""A shard directory gives the layout of its codes: decoding LM ids needs nothing else."""
import numpy as np
import pytest
import soundfile as sf
import torch

import speechtok
from speechtok import PreprocessConfig, ShardSet, preprocess
from speechtok.shards import ShardError


def test_shards_give_their_layout(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(5):
        sf.write(str(tmp_path / "in" / f"u{i}.wav"), 0.1 * rng.standard_normal(1600 * (i + 1)).astype("float32"), 16000)
    tok = speechtok.load("mulaw-16k")
    preprocess(str(tmp_path / "in"), tmp_path / "out", tok, config=PreprocessConfig(shard_items=2), progress=False)
    shards = ShardSet(tmp_path / "out")
    layout = shards.layout(pattern="flatten", add_bos=True, add_eos=True, offset=100)
    assert layout.model_id == tok.model_id and layout.sample_rate == tok.sample_rate
    n = 0
    for item in shards.items():
        codes = shards.to_codes(item)
        back = layout.decode(layout.encode(codes))  # no template: the layout knows the model
        assert torch.equal(back.codes, codes.codes) and back.model_id == tok.model_id
        n += 1
    assert n == 5
    with pytest.raises(ShardError, match="codebooks=2"):
        shards.layout(codebooks=2)
