"""The CPU extension called directly (as backends/cpu.py and any user of the backend modules do):
every tensor argument is checked, so a transposed, expanded or mis-sized tensor is an error
instead of a wrong answer or a read outside its storage (issue 26, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import random_block_mask

from sparcl_kernels import BlockLayout
from sparcl_kernels.backends import get_backend, reference
from sparcl_kernels.geometry import ConvGeometry

cpu = get_backend("cpu")


def _linear(seed=0):
    generator = torch.Generator().manual_seed(seed)
    layout = BlockLayout.from_block_mask(random_block_mask((4, 4), 0.6, generator), (8, 8))
    m, k = layout.shape
    x = torch.randn(6, k, generator=generator)
    values = torch.randn(layout.values_shape, generator=generator)
    grad_out = torch.randn(6, m, generator=generator)
    return layout, x, values, grad_out


def _non_contiguous(t):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def test_contiguous_inputs_still_match_the_reference():
    layout, x, values, _ = _linear()
    torch.testing.assert_close(
        cpu.forward(x, values, layout, None), reference.forward(x, values, layout, None)
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda L, x, v, g: cpu.forward(x, _non_contiguous(v), L, None), "values"),
        (lambda L, x, v, g: cpu.forward(x, v[:1].expand_as(v), L, None), "values"),
        (lambda L, x, v, g: cpu.forward(x.t().contiguous().t(), v, L, None), "x"),
        (lambda L, x, v, g: cpu.grad_input(g, _non_contiguous(v), L), "values"),
        (lambda L, x, v, g: cpu.grad_weight(g.t().contiguous().t(), x, L, None), "grad_out"),
        (lambda L, x, v, g: cpu.grad_weight(g, x.double(), L, None), "grad_out"),
        (lambda L, x, v, g: cpu.forward(x, v[1:], L, None), "values"),
        (lambda L, x, v, g: cpu.forward(x, v.double(), L, None), "x"),
        (
            lambda L, x, v, g: cpu.grad_weight(g, x, L, torch.ones(L.nnz + 1, dtype=torch.bool)),
            "grad_block_mask",
        ),
    ],
    ids=[
        "strided-values",
        "expanded-values",
        "strided-x",
        "strided-values-dx",
        "strided-grad-out-dw",
        "dtype-mismatch-dw",
        "values-of-another-nnz",
        "values-dtype",
        "mask-size",
    ],
)
def test_bad_tensor_arguments_are_refused(call, message):
    layout, x, values, grad_out = _linear()
    with pytest.raises(RuntimeError, match=message):
        call(layout, x, values, grad_out)


def test_conv_forward_refuses_strided_values():
    generator = torch.Generator().manual_seed(2)
    layout = BlockLayout.from_block_mask(random_block_mask((2, 9), 0.5, generator), (4, 4))
    x = torch.randn(2, 5, 5, 4, generator=generator)
    values = torch.randn(layout.values_shape, generator=generator)
    geometry = ConvGeometry.of((3, 3), (1, 1), (1, 1), (1, 1))
    cpu.conv_forward(x, values, layout, None, geometry)
    with pytest.raises(RuntimeError, match="values"):
        cpu.conv_forward(x, _non_contiguous(values), layout, None, geometry)


def test_index_tensors_that_disagree_with_nnz_are_refused():
    layout, x, values, _ = _linear()
    row_offsets = layout.row_offsets.clone()
    row_offsets[-1] += 1  # one block more than stored: would read past values
    index = (row_offsets, *layout.tensors()[1:])
    with pytest.raises(RuntimeError, match="end at nnz"):
        cpu._cpu.forward(x, values, *index, None, None)


_CORRUPT_INDEX = """
import torch
from sparcl_kernels import BlockLayout
from sparcl_kernels.backends import get_backend
layout = BlockLayout.from_block_mask(torch.ones(2, 2, dtype=torch.bool), (8, 8))
layout.col_indices[1] = 7  # outside the two block columns
try:
    get_backend("cpu").forward(torch.randn(3, 16), torch.randn(4, 8, 8), layout, None)
except RuntimeError as error:
    print("refused:", error)
else:
    print("ran")
"""


def test_the_debug_switch_validates_every_index():
    env = {**os.environ, "SPARCL_CHECK_INDICES": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _CORRUPT_INDEX], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "refused" in result.stdout and "col_indices[1] = 7" in result.stdout, result.stdout
