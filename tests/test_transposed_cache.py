"""The CPU backend keeps each layer's transposed blocks between forwards until values change.

Every way a layer's values change must make the next forward use the new values: a stale
copy would be a silent wrong answer. Each test runs a forward (filling the cache), changes
the layer one way, and checks the next forward against the dense equivalent.
"""

from __future__ import annotations

import pytest
import torch

from sparcl_kernels.backends import cpu
from sparcl_kernels.nn import SparseConv2d, SparseLinear


def _layers():
    torch.manual_seed(0)
    return [
        (SparseLinear(64, 32, block_size=16, sparsity=0.5), torch.randn(5, 64)),
        (SparseConv2d(32, 32, 3, padding=1, block_size=8, sparsity=0.5), torch.randn(2, 32, 6, 6)),
    ]


def _assert_current(layer, x) -> None:
    with torch.no_grad():
        expected = layer.to_dense()(x)
        scale = expected.abs().max().item()
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture(params=["linear", "conv"])
def layer_and_input(request):
    return _layers()[request.param == "conv"]


def test_the_copy_is_reused_while_values_do_not_change(layer_and_input):
    layer, x = layer_and_input
    _assert_current(layer, x)
    first = cpu.transposed_blocks(layer.values)
    assert cpu.transposed_blocks(layer.values) is first
    assert torch.equal(first, layer.values.detach().transpose(1, 2))


def test_an_in_place_optimizer_step_refreshes_it(layer_and_input):
    layer, x = layer_and_input
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):
        _assert_current(layer, x)
        layer(x).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    _assert_current(layer, x)


def test_set_block_mask_and_update_blocks_refresh_it(layer_and_input):
    layer, x = layer_and_input
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    _assert_current(layer, x)
    with torch.no_grad():
        layer.values.normal_()  # no zero blocks, so that moving them changes the output
    _assert_current(layer, x)
    # Same number of stored blocks: values keep their storage and are remapped in place.
    mask = layer.block_mask.clone()
    stored, free = mask.flatten().nonzero()[0, 0], (~mask).flatten().nonzero()[0, 0]
    mask.view(-1)[stored], mask.view(-1)[free] = False, True
    pointer = layer.values.data_ptr()
    layer.set_block_mask(mask, optimizer=optimizer)
    assert layer.values.data_ptr() == pointer
    _assert_current(layer, x)
    with torch.no_grad():
        layer.values.normal_()
    _assert_current(layer, x)
    grow = torch.zeros_like(layer.block_mask)
    grow.view(-1)[(~layer.block_mask).flatten().nonzero()[0, 0]] = True
    layer.update_blocks(prune=torch.tensor([1]), grow=grow, optimizer=optimizer)
    _assert_current(layer, x)


def test_load_state_dict_refreshes_it(layer_and_input):
    layer, x = layer_and_input
    _assert_current(layer, x)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["values"].normal_()
    layer.load_state_dict(state)
    _assert_current(layer, x)
    assert torch.equal(cpu.transposed_blocks(layer.values), state["values"].transpose(1, 2))


def test_tensors_without_a_version_counter_are_transposed_each_call():
    layer, x = _layers()[0]
    with torch.inference_mode():
        values = layer.values.detach().clone()
        assert torch.equal(cpu.transposed_blocks(values), values.transpose(1, 2))
        torch.testing.assert_close(
            cpu.forward(x, values, layer.layout, None), x @ layer.to_dense().weight.t()
        )
