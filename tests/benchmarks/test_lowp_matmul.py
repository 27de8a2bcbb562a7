"""The low-precision kernel table's claims about row independence (benchmarks/lowp_matmul.py)."""
import torch

from speechtok.benchmarks.lowp_matmul import _int8_rows, _int_mm, kernels


def test_per_row_int8_product_is_independent_of_the_other_rows():
    torch.manual_seed(0)
    w = torch.randn(48, 32)
    x = torch.randn(5, 32)
    x[2] *= 50  # a loud row next to quiet ones
    wq, scale = _int8_rows(w)
    batched = _int_mm(x, wq, scale)
    alone = torch.cat([_int_mm(x[i:i + 1], wq, scale) for i in range(5)])
    assert torch.equal(batched, alone)  # exact int32 sums, per-row scales
    assert (batched - x @ w.t()).abs().max() < 0.05 * (x @ w.t()).abs().max()


def test_fbgemm_dynamic_int8_rows_depend_on_each_other():
    torch.manual_seed(0)
    w = torch.randn(48, 32)
    x = torch.randn(5, 32)
    x[2] *= 50
    prepared, fn, _, act = kernels([w])["int8 dynamic (fbgemm linear_dynamic)"]
    batched = fn(x, prepared[0])
    alone = torch.cat([fn(x[i:i + 1], prepared[0]) for i in range(5)])
    assert act.startswith("tensor") and not torch.equal(batched[0], alone[0])
