"""BlockLayout: construction, index metadata, conversions and validation."""

from __future__ import annotations

import pytest
import torch

from sparcl_kernels import BlockLayout


def _mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_from_block_mask_builds_csr_and_transpose_index():
    mask = _mask([[1, 0, 1], [0, 0, 0], [1, 1, 0]])
    layout = BlockLayout.from_block_mask(mask, (4, 8))
    assert layout.shape == (12, 24)
    assert layout.block_size == (4, 8)
    assert layout.nnz == 4
    assert layout.density == pytest.approx(4 / 9)
    assert layout.row_offsets.tolist() == [0, 2, 2, 4]
    assert layout.col_indices.tolist() == [0, 2, 0, 1]
    assert layout.row_indices.tolist() == [0, 0, 2, 2]
    # Block ids per block column, in block-row order: col 0 -> blocks 0 (row 0), 2 (row 2).
    assert layout.transpose_offsets.tolist() == [0, 2, 3, 4]
    assert layout.transpose_block_ids.tolist() == [0, 2, 3, 1]
    for t in layout.tensors():
        assert t.dtype == torch.int32
    assert torch.equal(layout.block_mask(), mask)


def test_square_int_block_size():
    layout = BlockLayout.from_block_mask(torch.ones(2, 3, dtype=torch.bool), 16)
    assert layout.block_size == (16, 16)
    assert layout.shape == (32, 48)


@pytest.mark.parametrize("fill", [False, True])
def test_empty_and_full_layouts(fill):
    mask = torch.full((3, 5), fill)
    layout = BlockLayout.from_block_mask(mask, (2, 2))
    assert layout.nnz == (15 if fill else 0)
    assert layout.density == (1.0 if fill else 0.0)
    weight = torch.randn(6, 10)
    dense = layout.to_dense(layout.to_blocks(weight))
    assert torch.equal(dense, weight if fill else torch.zeros_like(weight))


def test_to_blocks_to_dense_round_trip_rectangular():
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 3, generator=generator) < 0.5
    layout = BlockLayout.from_block_mask(mask, (16, 32))
    weight = torch.randn(64, 96, generator=generator)
    values = layout.to_blocks(weight)
    assert values.shape == (layout.nnz, 16, 32)
    expected = weight * layout.expand_block_mask()
    assert torch.equal(layout.to_dense(values), expected)
    # Blocks are in row-major (block_row, block_col) order.
    for i, (r, c) in enumerate(
        zip(layout.row_indices.tolist(), layout.col_indices.tolist(), strict=True)
    ):
        assert torch.equal(values[i], weight[r * 16 : (r + 1) * 16, c * 32 : (c + 1) * 32])


def test_to_dense_is_differentiable():
    layout = BlockLayout.from_block_mask(_mask([[1, 0], [1, 1]]), (2, 2))
    values = torch.randn(3, 2, 2, requires_grad=True)
    layout.to_dense(values).sum().backward()
    assert torch.equal(values.grad, torch.ones(3, 2, 2))


def test_from_dense_keeps_largest_norm_blocks():
    weight = torch.zeros(4, 8)
    # Block norms (2x2 blocks, grid 2x4): give distinct magnitudes.
    magnitudes = torch.tensor([[1.0, 5.0, 2.0, 7.0], [3.0, 0.5, 6.0, 4.0]])
    weight = magnitudes.repeat_interleave(2, 0).repeat_interleave(2, 1)
    layout = BlockLayout.from_dense(weight, (2, 2), sparsity=0.5)
    assert layout.nnz == 4
    expected = magnitudes >= 4.0
    assert torch.equal(layout.block_mask(), expected)


def test_from_dense_tie_break_is_deterministic_by_position():
    weight = torch.ones(4, 8)  # every block has the same norm
    layout = BlockLayout.from_dense(weight, (2, 2), sparsity=0.75)
    assert layout.nnz == 2
    assert torch.equal(layout.block_mask().flatten().nonzero().flatten(), torch.tensor([0, 1]))


@pytest.mark.parametrize("sparsity, nnz", [(0.0, 64), (0.9, 6), (0.95, 3), (1.0, 0)])
def test_from_dense_counts(sparsity, nnz):
    weight = torch.randn(64, 128)
    layout = BlockLayout.from_dense(weight, (8, 16), sparsity)
    assert layout.nnz == nnz


def test_index_tensors_round_trip_and_equality():
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) < 0.4
    layout = BlockLayout.from_block_mask(mask, (8, 4))
    tensors = layout.index_tensors()
    rebuilt = BlockLayout.from_index_tensors(layout.shape, layout.block_size, **tensors)
    assert rebuilt == layout
    for a, b in zip(rebuilt.tensors(), layout.tensors(), strict=True):
        assert torch.equal(a, b)
    other = BlockLayout.from_block_mask(~mask, (8, 4))
    assert other != layout


def test_index_tensors_live_in_module_state_dict():
    layout = BlockLayout.from_dense(torch.randn(32, 32), 8, 0.5)
    module = torch.nn.Module()
    for name, tensor in layout.index_tensors().items():
        module.register_buffer(name, tensor.clone())
    state = module.state_dict()
    restored = BlockLayout.from_index_tensors(
        (32, 32), 8, state["row_offsets"], state["col_indices"]
    )
    assert restored == layout


def test_to_device_keeps_layout():
    layout = BlockLayout.from_dense(torch.randn(16, 16), 4, 0.5)
    moved = layout.to("meta")
    assert moved.device.type == "meta"
    assert moved.shape == layout.shape and moved.nnz == layout.nnz
    assert layout.to("cpu") == layout


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: BlockLayout.from_block_mask(torch.ones(2, 2), 2), TypeError, "block_mask.*bool"),
        (lambda: BlockLayout.from_block_mask([[True]], 2), TypeError, "block_mask"),
        (
            lambda: BlockLayout.from_block_mask(torch.ones(4, dtype=torch.bool), 2),
            ValueError,
            "2-D",
        ),
        (
            lambda: BlockLayout.from_block_mask(torch.ones(2, 2, dtype=torch.bool), 0),
            ValueError,
            "block_size",
        ),
        (
            lambda: BlockLayout.from_block_mask(torch.ones(2, 2, dtype=torch.bool), "a"),
            TypeError,
            "block_size",
        ),
        (lambda: BlockLayout.from_dense(torch.randn(10, 16), (4, 4), 0.5), ValueError, "divide"),
        (lambda: BlockLayout.from_dense(torch.randn(8, 8), 4, 1.5), ValueError, "sparsity"),
        (lambda: BlockLayout.from_dense(torch.randn(8, 8), 4, "high"), TypeError, "sparsity"),
        (lambda: BlockLayout.from_dense(torch.randn(8), 4, 0.5), ValueError, "weight"),
        (
            lambda: BlockLayout.from_index_tensors(
                (8, 8), 4, torch.tensor([0, 1]), torch.tensor([0])
            ),
            ValueError,
            "row_offsets",
        ),
        (
            lambda: BlockLayout.from_index_tensors(
                (8, 8), 4, torch.tensor([0, 1, 1]), torch.tensor([2])
            ),
            ValueError,
            "col_indices",
        ),
        (
            lambda: BlockLayout.from_index_tensors(
                (8, 8), 4, torch.tensor([0, 2, 2]), torch.tensor([1, 0])
            ),
            ValueError,
            "increasing",
        ),
    ],
)
def test_validation_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_to_blocks_and_to_dense_check_shapes():
    layout = BlockLayout.from_dense(torch.randn(8, 8), 4, 0.5)
    with pytest.raises(ValueError, match="weight"):
        layout.to_blocks(torch.randn(8, 12))
    with pytest.raises(ValueError, match="values"):
        layout.to_dense(torch.randn(layout.nnz + 1, 4, 4))


def test_from_dense_keeps_at_least_one_unit_below_sparsity_one():
    weight = torch.randn(16, 32)
    # 2 blocks at 0.9 would round to none kept: a layer that computes nothing.
    assert BlockLayout.from_dense(weight, 16, 0.9).nnz == 1
    assert BlockLayout.from_dense(weight, 16, 1.0).nnz == 0
    tied = BlockLayout.from_dense(weight, 8, 0.9, tied_columns=4)  # 2 x 1 units of 4 blocks
    assert tied.nnz == 4 and tied.block_mask().sum(1).tolist() in ([4, 0], [0, 4])
    with pytest.raises(ValueError, match="tied_columns"):
        BlockLayout.from_dense(weight, 8, 0.5, tied_columns=3)
