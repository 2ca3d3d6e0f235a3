"""The convolutions' tap policy: per-tap blocks ("each") or all taps of a channel pair ("all").

An all-taps layer keeps or drops the kh * kw blocks of one (output block, input block) channel
pair together: at construction, in layout changes, under TDM and DGM, and in its state dict.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparcl_kernels as sk
from sparcl.dgm import GradientMasking
from sparcl.masking import masked_units
from sparcl.tdm import TaskAwareMasking, TdmSchedule
from sparcl_kernels.nn import SparseConv2d
from sparcl_kernels.nn.conv import conv_weight_to_gemm


def _conv(cin=32, cout=48, kernel=3, seed=0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2)


def _tied(layer: SparseConv2d) -> torch.Tensor:
    """The block mask as [block rows, taps, channel blocks]."""
    rows, cols = layer.layout.block_grid
    taps = layer.kernel_size[0] * layer.kernel_size[1]
    return layer.block_mask.view(rows, taps, cols // taps)


def _assert_tied(layer: SparseConv2d) -> None:
    tied = _tied(layer)
    assert torch.equal(tied, tied[:, :1].expand_as(tied))


def test_all_taps_keeps_the_channel_pairs_of_largest_norm_over_all_taps():
    conv = _conv()
    layer = SparseConv2d.from_dense(conv, sparsity=0.5, block_size=8, block_taps="all")
    _assert_tied(layer)
    # Hand computation: the norm of a unit is over its 9 taps' 8x8 blocks.
    w = conv.weight.detach().double()  # [48, 32, 3, 3]
    norms = w.view(6, 8, 4, 8, 3, 3).pow(2).sum(dim=(1, 3, 4, 5)).sqrt()  # [6 rows, 4 pairs]
    keep = torch.zeros(24, dtype=torch.bool)
    keep[torch.sort(norms.flatten(), descending=True, stable=True).indices[:12]] = True
    assert torch.equal(layer.unit_mask(), keep.view(6, 4))
    assert layer.values.shape == (12 * 9, 8, 8)
    assert layer.unit_grid == (6, 4)
    # The stored blocks hold the dense weight's values and compute its convolution.
    dense = layer.to_dense()
    kept = keep.view(6, 1, 4, 1).expand(6, 8, 4, 8).reshape(48, 32)
    expected = conv.weight.detach() * kept[:, :, None, None]
    assert torch.equal(dense.weight.detach(), expected)
    x = torch.randn(2, 32, 7, 7)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-5)


def test_per_tap_is_the_default_and_unchanged():
    conv = _conv(seed=1)
    default = SparseConv2d.from_dense(conv, sparsity=0.5, block_size=8)
    assert default.block_taps == "each" and default.tied_columns == 1
    layout = sk.BlockLayout.from_dense(conv_weight_to_gemm(conv.weight), 8, 0.5)
    assert torch.equal(default.block_mask, layout.block_mask())
    assert default.unit_grid == layout.block_grid


def test_unit_block_ids_name_each_units_taps_in_storage():
    layer = SparseConv2d.from_dense(_conv(), sparsity=0.75, block_size=16, block_taps="all")
    ids = layer.unit_block_ids()
    units = int(layer.unit_mask().sum())
    assert ids.shape == (units, 9)
    assert sorted(ids.flatten().tolist()) == list(range(layer.values.shape[0]))
    layout = layer.layout
    for unit in ids:  # one block row, channel block fixed, tap t at column t * (32/16) + c
        rows = layout.row_indices[unit].unique()
        cols = layout.col_indices[unit].long()
        assert rows.numel() == 1 and torch.equal(cols - cols[0], torch.arange(9) * 2)


def test_bad_tap_policies_are_refused_by_name():
    with pytest.raises(ValueError, match="block_taps must be one of"):
        SparseConv2d(16, 16, 3, block_size=8, block_taps="some")
    with pytest.raises(ValueError, match="block_taps must be one of"):
        sk.sparsify(nn.Sequential(_conv(16, 16)), 0.5, 8, block_taps="every")


def test_a_layout_change_that_splits_a_unit_is_refused():
    layer = SparseConv2d.from_dense(_conv(), sparsity=0.5, block_size=8, block_taps="all")
    before = layer.block_mask.clone()
    split = before.clone()
    split[0, 0] = ~split[0, 0]  # tap 0 of the first channel pair only
    values = layer.values.detach().clone()
    with pytest.raises(ValueError, match="ties 9 blocks per unit"):
        layer.set_block_mask(split, optimizer=None)
    with pytest.raises(ValueError, match="ties 9 blocks per unit"):
        layer.update_blocks(prune=torch.tensor([0]), optimizer=None)
    assert torch.equal(layer.block_mask, before) and torch.equal(layer.values, values)
    # Whole units move: drop the first stored unit, grow the first unstored one.
    tied = _tied(layer).clone()
    units = layer.unit_mask().clone()
    first_in = units.flatten().nonzero()[0, 0]
    first_out = (~units).flatten().nonzero()[0, 0]
    units.view(-1)[first_in], units.view(-1)[first_out] = False, True
    moved = units.unsqueeze(1).expand_as(tied).reshape(layer.block_mask.shape)
    layer.set_block_mask(moved, optimizer=None)
    _assert_tied(layer)
    assert torch.equal(layer.unit_mask(), units)


def test_state_dict_records_the_tap_policy():
    saved = SparseConv2d.from_dense(_conv(), sparsity=0.5, block_size=8, block_taps="all")
    state = saved.state_dict()
    assert state["geometry_code"].tolist()[-1] == 1
    again = SparseConv2d(32, 48, 3, padding=1, block_size=8, sparsity=0.9, block_taps="all")
    again.load_state_dict(state)
    assert torch.equal(again.values, saved.values) and torch.equal(
        again.block_mask, saved.block_mask
    )
    per_tap = SparseConv2d(32, 48, 3, padding=1, block_size=8, sparsity=0.5)
    with pytest.raises(RuntimeError, match="block_taps='all'"):
        per_tap.load_state_dict(state)
    # A per-tap layer saved before the policy was recorded (7-entry geometry) still loads.
    old = per_tap.state_dict()
    old["geometry_code"] = old["geometry_code"][:7]
    SparseConv2d(32, 48, 3, padding=1, block_size=8, sparsity=0.5).load_state_dict(old)
    with pytest.raises(RuntimeError, match="geometry"):
        again.load_state_dict(old)


def test_sparsify_passes_the_policy_to_convolutions_only():
    torch.manual_seed(0)
    model = nn.Sequential(_conv(16, 32), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 25, 64))
    sk.sparsify(model, 0.75, 8, block_taps="all")
    assert isinstance(model[0], SparseConv2d) and model[0].block_taps == "all"
    _assert_tied(model[0])
    assert isinstance(model[3], sk.nn.SparseLinear) and model[3].tied_columns == 1
    model(torch.randn(2, 16, 5, 5)).sum().backward()
    assert model[0].values.grad is not None


def _all_taps_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(_conv(16, 32), nn.ReLU(), _conv(32, 32, seed=2))
    return sk.sparsify(model, 0.5, 8, block_taps="all")


def _backward(model: nn.Module) -> None:
    model.zero_grad()
    model(torch.randn(4, 16, 6, 6)).square().sum().backward()


def test_tdm_prunes_and_grows_whole_units():
    model = _all_taps_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    units = masked_units(model)
    assert [u.blocks_per_unit for u in units] == [9, 9]
    stored = [u.n_stored for u in units]
    _backward(model)
    optimizer.step()
    tdm = TaskAwareMasking(model, TdmSchedule(p_inter=0.25, p_intra=0.25, delta_k=1), seed=0)
    assert tdm.begin_epoch(0, optimizer)  # grow a quarter of each layer's units
    for layer in (model[0], model[2]):
        _assert_tied(layer)
    grown = [u.n_stored for u in units]
    assert grown == [
        s + round(0.25 * u.stored_mask().numel()) for s, u in zip(stored, units, strict=True)
    ]
    before = [u.stored_mask().clone() for u in units]
    _backward(model)
    assert tdm.begin_epoch(1, optimizer)  # prune back and swap: whole units again
    for unit, mask in zip(units, before, strict=True):
        _assert_tied(unit.layer)
        assert unit.n_stored == grown[units.index(unit)] - round(0.25 * mask.numel())
        assert not torch.equal(unit.stored_mask(), mask)
    _backward(model)
    optimizer.step()


def test_unit_importance_sums_over_the_units_blocks():
    model = _all_taps_model()
    _backward(model)
    unit = masked_units(model)[1]
    values, grad = unit.layer.values.detach(), unit.layer.values.grad
    ids = unit.layer.unit_block_ids()
    expected = (values.abs().sum((1, 2)) + 0.5 * grad.abs().sum((1, 2)))[ids].sum(1)
    torch.testing.assert_close(unit.importance(0.5), expected)
    norms = grad.pow(2).sum((1, 2))[ids].sum(1).sqrt()
    torch.testing.assert_close(unit.gradient_norms(), norms)


def test_dgm_masks_whole_units_and_counts_blocks():
    model = _all_taps_model()
    dgm = GradientMasking(model, keep_fraction=0.5, interval=2)
    dgm.before_backward()
    _backward(model)
    dgm.after_backward()  # refresh: picks half of each layer's stored units
    for unit in masked_units(model):
        blocks = unit.layer.grad_block_mask
        assert blocks is not None and blocks.shape == (unit.layer.values.shape[0],)
        per_unit = blocks[unit.layer.unit_block_ids()]
        assert torch.equal(per_unit, per_unit[:, :1].expand_as(per_unit))
        assert int(unit.grad_mask.sum()) == round(0.5 * unit.n_stored)
    dgm.before_backward()
    _backward(model)
    dgm.after_backward()
    for unit in masked_units(model):
        off = ~unit.layer.grad_block_mask
        assert off.any() and unit.layer.values.grad[off].abs().max() == 0
    assert dgm.gradient_density == pytest.approx(0.75)  # one full step, one at half
    assert dgm.current_density() == pytest.approx(0.5)


def test_cli_block_taps_is_validated_applied_and_recorded(tmp_path):
    from sparcl.config import TrainConfig
    from sparcl.data import load_dataset
    from sparcl.train import build_network, layer_block_taps

    bad = TrainConfig(model="sparcl-derpp", sparsity=0.9, block_taps="both")
    with pytest.raises(ValueError, match="--block_taps"):
        bad.validate()
    unstructured = TrainConfig(
        model="sparcl-derpp", sparsity=0.9, block_taps="all", granularity="unstructured"
    )
    with pytest.raises(ValueError, match="needs --granularity block"):
        unstructured.validate()
    from cl_data import write_fmnist

    data = load_dataset("seq-fmnist", write_fmnist(tmp_path / "fmnist"))
    config = TrainConfig(model="sparcl-derpp", nf=32, sparsity=0.9, block_taps="all")
    config.validate()
    net = build_network(config, data)
    taps = layer_block_taps(net)
    assert len(taps) == 16 and set(taps.values()) == {"all"}
    for module in net.modules():
        if isinstance(module, SparseConv2d):
            _assert_tied(module)
            assert module.unit_mask().sum() >= 1
