import math

import pytest
import torch

from speechtok import Codes, CodesError


def make(B=2, K=3, T=7, sizes=(4, 8, 16), lengths=(7, 4), **kw):
    g = torch.Generator().manual_seed(0)
    raw = torch.stack([torch.randint(0, s, (B, T), generator=g) for s in sizes], 1)
    return Codes.from_tensor(raw, torch.tensor(lengths), frame_rate=12.5, codebook_sizes=sizes,
                             sample_rate=16000, model_id="m@abc", **kw)


def test_from_tensor_pads_with_minus_one_and_validates():
    c = make()
    assert c.codes.dtype == torch.long and c.codes.shape == (2, 3, 7)
    assert (c.codes[1, :, 4:] == -1).all() and (c.codes[1, :, :4] >= 0).all()
    assert c.mask().tolist()[1] == [True] * 4 + [False] * 3
    assert c.validate() is c


@pytest.mark.parametrize("change, message", [
    (dict(codebook_sizes=(4, 8)), "codebook_sizes has 2 entries"),
    (dict(lengths=torch.tensor([8, 1])), "lengths must lie"),
    (dict(lengths=torch.tensor([1])), "lengths must be"),
    (dict(frame_rate=0.0), "frame_rate"),
    (dict(n_semantic=4), "n_semantic"),
    (dict(durations=torch.ones(2, 5, dtype=torch.long)), "durations must be"),
])
def test_validate_names_the_problem(change, message):
    with pytest.raises(CodesError, match=message):
        make().with_(**change).validate()


def test_validate_rejects_out_of_range_code_with_position():
    c = make()
    bad = c.codes.clone()
    bad[0, 2, 5] = 16
    with pytest.raises(CodesError, match=r"code 16 at item 0, codebook 2, frame 5 is outside \[0, 16\)"):
        c.with_(codes=bad).validate()
    bad = c.codes.clone()
    bad[1, 0, 6] = 2  # a real code inside padding
    with pytest.raises(CodesError, match="padding"):
        c.with_(codes=bad).validate()
    with pytest.raises(CodesError, match="int64"):
        c.with_(codes=c.codes.int()).validate()


def test_take_codebooks():
    c = make(n_semantic=1)
    t = c.take_codebooks(2)
    assert t.codebook_sizes == (4, 8) and torch.equal(t.codes, c.codes[:, :2]) and t.n_semantic == 1
    assert c.take_codebooks(1).bitrate() == pytest.approx(12.5 * 2)
    with pytest.raises(CodesError):
        c.take_codebooks(0)
    with pytest.raises(CodesError):
        c.take_codebooks(4)


def test_batch_unbatch_round_trip():
    c = make(audio_lengths=torch.tensor([1000, 600]))
    items = c.unbatch()
    assert [i.num_frames for i in items] == [7, 4]
    back = Codes.batch(items)
    assert torch.equal(back.codes, c.codes) and torch.equal(back.lengths, c.lengths)
    assert torch.equal(back.audio_lengths, c.audio_lengths)
    with pytest.raises(CodesError, match="model_id"):
        Codes.batch([items[0], items[1].with_(model_id="other@1")])
    with pytest.raises(CodesError, match="at least one"):
        Codes.batch([])


def test_bitrates():
    c = make()
    assert c.bitrate() == pytest.approx(12.5 * (2 + 3 + 4))
    # all-constant codes have zero entropy; uniform codes over all values reach log2(size)
    const = Codes.from_tensor(torch.zeros(1, 1, 80, dtype=torch.long), frame_rate=10.0, codebook_sizes=(4,),
                              sample_rate=16000, model_id="m@a")
    assert const.entropy_bitrate() == 0.0
    uni = const.with_(codes=torch.arange(80).remainder(4).view(1, 1, 80))
    assert uni.entropy_bitrate() == pytest.approx(10.0 * 2)


def test_durations_rates_and_expand():
    codes = torch.tensor([[[3, 1, 2, -1]]])
    d = torch.tensor([[2, 1, 3, 0]])
    c = Codes.from_tensor(codes, torch.tensor([3]), frame_rate=50.0, codebook_sizes=(4,), sample_rate=16000,
                          model_id="m@a", durations=d).validate()
    assert c.grid_frames().tolist() == [6]
    assert c.seconds().tolist() == [6 / 50]
    assert c.bitrate() == pytest.approx(3 * 2 / (6 / 50))  # effective: 3 tokens of 2 bits in 0.12 s
    e = c.expand()
    assert e.durations is None and e.codes.tolist() == [[[3, 3, 1, 2, 2, 2]]] and e.lengths.tolist() == [6]
    with pytest.raises(CodesError, match=">= 1"):
        c.with_(durations=torch.tensor([[2, 0, 3, 0]])).validate()


def test_zero_length_item():
    c = make(lengths=(0, 3))
    assert c.validate().mask()[0].sum() == 0
    assert c.unbatch()[0].num_frames == 0
    assert math.isfinite(c.entropy_bitrate())


def test_check_model():
    with pytest.raises(CodesError, match="made by model 'm@abc', not 'x@1'"):
        make().check_model("x@1")
