"""SparCL's three mechanisms in isolation: TDM schedule, DDR bookkeeping, DGM masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparcl.ddr import DataRemoval
from sparcl.dgm import GradientMasking
from sparcl.masking import BlockUnits, attach_element_masks, masked_units
from sparcl.tdm import TaskAwareMasking, TdmSchedule
from sparcl_kernels.nn import SparseLinear

# ---------------------------------------------------------------- TDM


def test_tdm_schedule_table():
    schedule = TdmSchedule(p_inter=0.01, p_intra=0.01, delta_k=5, frozen_epoch=45)
    assert schedule.action(0) == ((), 0.01)
    assert schedule.action(5) == ((0.01, 0.01), 0.01)
    for epoch in range(10, 45, 5):
        assert schedule.action(epoch) == ((0.01,), 0.01)
    for epoch in (1, 4, 7, 45, 50):
        assert schedule.action(epoch) == ((), 0.0)


def test_tdm_keeps_small_layers_at_their_density_over_many_tasks():
    """1% of 36 blocks rounds to 0 grows; the matching prune must round to 0 too."""
    torch.manual_seed(0)
    layer = SparseLinear(32, 288, block_size=16, sparsity=0.9)  # 2 x 18 = 36 blocks, 4 stored
    tdm = TaskAwareMasking(nn.Sequential(layer), TdmSchedule(), seed=0)
    for _task in range(10):
        for epoch in range(50):
            tdm.begin_epoch(epoch)
    assert layer.values.shape[0] == 4


@pytest.mark.parametrize(("in_features", "blocks"), [(24, 9), (96, 36)])
def test_tdm_moves_small_layers_at_the_scheduled_rate(in_features, blocks):
    """Fractional counts carry over: 1% of 9 or 36 blocks still moves the mask on average,
    and every task ends at the layer's target density."""
    torch.manual_seed(0)
    layer = SparseLinear(in_features, 24, block_size=8, sparsity=0.5)
    assert layer.layout.block_grid[0] * layer.layout.block_grid[1] == blocks
    stored = layer.values.shape[0]
    schedule = TdmSchedule()
    tdm = TaskAwareMasking(nn.Sequential(layer), schedule, seed=0)
    swaps = grows = 0
    tasks = 12
    for _task in range(tasks):
        for epoch in range(50):
            before = layer.layout.block_mask()
            tdm.begin_epoch(epoch)
            changed = int((layer.layout.block_mask() & ~before).sum())
            if epoch == 0:
                grows += changed
            else:
                swaps += changed
        assert layer.values.shape[0] == stored  # back at the target density
    # Scheduled per task: p_inter once, p_intra at epochs 5, 10, ..., 40 (8 times).
    expected_swaps = tasks * 8 * schedule.p_intra * blocks
    expected_grows = tasks * schedule.p_inter * blocks
    assert abs(swaps - expected_swaps) <= 1 and abs(grows - expected_grows) <= 1
    assert swaps >= 1


def test_tdm_grows_then_prunes_least_important_blocks():
    torch.manual_seed(0)
    layer = SparseLinear(64, 64, block_size=8, sparsity=0.5)  # 64 blocks, 32 stored
    model = nn.Sequential(layer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tdm = TaskAwareMasking(model, TdmSchedule(p_inter=2 / 64, p_intra=1 / 64, lam=0.5), seed=1)

    before = layer.layout.block_mask()
    assert tdm.begin_epoch(0, optimizer)
    after_grow = layer.layout.block_mask()
    grown = after_grow & ~before
    assert int(grown.sum()) == 2 and torch.equal(after_grow & before, before)
    positions = {tuple(p) for p in grown.nonzero().tolist()}
    layout = layer.layout
    for j, (r, c) in enumerate(
        zip(layout.row_indices.tolist(), layout.col_indices.tolist(), strict=True)
    ):
        if (r, c) in positions:
            assert torch.all(layer.values[j] == 0)  # grown blocks start at zero

    assert not tdm.begin_epoch(3, optimizer)  # nothing between delta_k epochs
    layer(torch.randn(16, 64)).square().sum().backward()
    scores = BlockUnits(layer).importance(0.5)
    expected_pruned_ids = torch.sort(scores, stable=True).indices[:3]
    layout = layer.layout
    expected_pruned = {
        (layout.row_indices[j].item(), layout.col_indices[j].item()) for j in expected_pruned_ids
    }
    mask_before = layout.block_mask()
    assert tdm.begin_epoch(5, optimizer)  # prune p_inter + p_intra = 3, regrow 1
    mask_after = layer.layout.block_mask()
    assert int(mask_after.sum()) == 32
    removed = {tuple(p) for p in (mask_before & ~mask_after).nonzero().tolist()}
    added = {tuple(p) for p in (mask_after & ~mask_before).nonzero().tolist()}
    assert removed == expected_pruned
    assert len(added) == 1 and not added & expected_pruned


def test_tdm_is_seeded():
    masks = []
    for _ in range(2):
        torch.manual_seed(0)
        layer = SparseLinear(64, 64, block_size=8, sparsity=0.5)
        TaskAwareMasking(nn.Sequential(layer), TdmSchedule(p_inter=4 / 64), seed=7).begin_epoch(0)
        masks.append(layer.layout.block_mask())
    assert torch.equal(masks[0], masks[1])


# ---------------------------------------------------------------- DDR


def test_ddr_counts_forgetting_events_on_hand_made_sequences():
    ddr = DataRemoval(4, remove_fraction=0.25, removal_epochs=(1,), seed=0)
    # Example 0: T F T F -> 2 events; 1: T T T T -> 0; 2: F F F F -> never learned; 3: F T F T -> 1.
    sequences = [
        [True, True, False, False],
        [False, True, False, True],
        [True, True, False, False],
        [False, True, False, True],
    ]
    for step in sequences:
        ddr.record(torch.arange(4), torch.tensor(step))
    assert ddr.forgetting_events.tolist() == [2, 0, 0, 1]
    assert ddr.ever_learned.tolist() == [True, True, False, True]
    assert ddr.begin_epoch(0) == 0  # not a removal epoch
    assert ddr.begin_epoch(1) == 1
    assert ddr.active_positions().tolist() == [0, 2, 3]  # the unforgettable example 1 goes
    # The statistics start over after a removal, as in the release.
    assert ddr.forgetting_events.sum() == 0 and not ddr.ever_learned.any()


def test_ddr_removal_schedule_and_seeded_tie_break():
    removed = []
    for _ in range(2):
        ddr = DataRemoval(40, remove_fraction=0.075, removal_epochs=(5, 10, 15, 20), seed=3)
        ddr.record(torch.arange(40), torch.ones(40, dtype=torch.bool))  # all learned, 0 events
        counts = [ddr.begin_epoch(epoch) for epoch in range(25)]
        assert sum(counts) == 12 and counts[5] == counts[10] == counts[15] == counts[20] == 3
        removed.append(ddr.active.clone())
    assert torch.equal(removed[0], removed[1])
    other = DataRemoval(40, seed=4)
    other.record(torch.arange(40), torch.ones(40, dtype=torch.bool))
    other.begin_epoch(5)
    assert int(other.active.sum()) == 37


# ---------------------------------------------------------------- DGM


def test_dgm_keeps_a_fraction_of_stored_blocks_and_masked_weights_do_not_move():
    torch.manual_seed(0)
    layer = SparseLinear(64, 64, block_size=8, sparsity=0.75)  # 16 stored blocks
    model = nn.Sequential(layer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dgm = GradientMasking(model, keep_fraction=0.25, interval=3)
    x = torch.randn(32, 64)
    for iteration in range(6):
        optimizer.zero_grad()
        dgm.before_backward()
        mask = layer.grad_block_mask
        before = layer.values.detach().clone()
        layer(x).square().sum().backward()
        dgm.after_backward()
        optimizer.step()
        if iteration % 3 == 0:
            assert mask is None  # refresh: full gradient
            assert int(layer.grad_block_mask.sum()) == 4  # 25% of the 16 stored blocks
        else:
            assert torch.equal(layer.values[~mask], before[~mask])
            assert not torch.equal(layer.values[mask], before[mask])
    # 2 full iterations of 16 blocks + 4 masked of 4 blocks, over 6 x 16 stored.
    assert dgm.gradient_density == pytest.approx((2 * 16 + 4 * 4) / (6 * 16))


def test_dgm_picks_the_largest_gradient_blocks():
    layer = SparseLinear(16, 16, block_size=8, sparsity=0.0)  # 4 blocks
    dgm = GradientMasking(nn.Sequential(layer), keep_fraction=0.5, interval=10)
    dgm.before_backward()
    layer.values.grad = torch.stack([torch.full((8, 8), v) for v in (1.0, 4.0, 2.0, 3.0)])
    dgm.after_backward()
    assert layer.grad_block_mask.tolist() == [False, True, False, True]


# ---------------------------------------------------------------- unstructured units


def test_element_masks_keep_the_largest_weights_and_pruned_weights_stay_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    magnitudes = model[0].weight.detach().abs().flatten()
    assert attach_element_masks(model, 0.75, include=["0"]) == ["0"]
    mask = model[0].weight_mask
    assert int(mask.sum()) == 64 and not hasattr(model[2], "weight_mask")
    assert magnitudes[mask.flatten()].min() >= magnitudes[~mask.flatten()].max()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 16)).square().sum().backward()
        optimizer.step()
    assert torch.all(model[0].weight[~mask] == 0)
    assert torch.all(model[0].weight.grad[~mask] == 0)


def test_element_masked_layers_are_modules_of_their_own_sharing_the_dense_parameters():
    from sparcl.masking import MaskedConv2d, MaskedLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(32, 4))
    weights = [model[0].weight, model[2].weight]
    x = torch.randn(2, 3, 4, 4)
    assert attach_element_masks(model, 0.5, include=["0", "2"]) == ["0", "2"]
    assert type(model[0]) is MaskedConv2d and type(model[2]) is MaskedLinear
    assert [model[0].weight, model[2].weight] == weights  # the same Parameter objects
    assert set(model.state_dict()) == {
        f"{i}.{name}" for i in (0, 2) for name in ("weight", "bias", "weight_mask")
    }
    assert all(w._backward_hooks is None for w in weights)  # nothing stuck onto tensors
    twin = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(32, 4))
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if "mask" not in k})
    torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)


def test_tdm_and_dgm_over_single_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10))  # 200 weights, 100 stored
    attach_element_masks(model, 0.5, include=["0"])
    layer = model[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tdm = TaskAwareMasking(model, TdmSchedule(p_inter=0.05, p_intra=0.02, delta_k=2), seed=0)
    before = layer.weight_mask.clone()
    assert tdm.begin_epoch(0, optimizer)  # grows 5% of 200 = 10 weights, at zero
    grown = layer.weight_mask & ~before
    assert int(grown.sum()) == 10 and torch.all(layer.weight[grown] == 0)
    layer(torch.randn(8, 20)).square().sum().backward()
    units = masked_units(model)[0]
    scores = units.importance(0.5)
    assert scores.shape == (110,)
    assert tdm.begin_epoch(2, optimizer)  # prunes 5% + 2% = 14 least important, regrows 4
    assert int(layer.weight_mask.sum()) == 100
    kept = layer.weight_mask.clone()

    dgm = GradientMasking(model, keep_fraction=0.3, interval=2)
    x = torch.randn(8, 20)
    for iteration in range(4):
        optimizer.zero_grad()
        dgm.before_backward()
        keep = units.grad_mask
        previous = layer.weight.detach().clone()
        layer(x).square().sum().backward()
        dgm.after_backward()
        optimizer.step()
        if iteration % 2:
            moved = (layer.weight != previous)[kept]
            assert not moved[~keep].any() and moved[keep].any()
        else:
            assert int(units.grad_mask.sum()) == 30
    assert torch.all(layer.weight[~kept] == 0)
    assert dgm.gradient_density == pytest.approx((2 * 100 + 2 * 30) / 400)


# ---------------------------------------------------------------- FLOPs


def test_flops_of_a_tiny_model_by_hand():
    from sparcl.flops import count_flops
    from sparcl_kernels.nn import SparseConv2d

    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),  # 4x4 out: 16 px * 8 * 1 * 9 = 1152 MACs
        SparseConv2d(8, 16, 3, padding=1, block_size=8, sparsity=0.5),  # 16 * 16 * 8 * 9 = 18432
        nn.Flatten(),
        nn.Linear(16 * 16, 10),  # 2560 MACs
    )
    flops = count_flops(model, (1, 4, 4))
    assert flops.dense_part == 2 * (1152 + 2560)
    assert flops.sparse_part == 2 * 18432
    assert flops.sparse_density == model[1].layout.density == 0.5
    step = flops.step(samples=32, gradient_density=0.5)
    forward = 2 * (1152 + 2560) + 0.5 * 2 * 18432
    weight_grad = 2 * (1152 + 2560) + 0.5 * 0.5 * 2 * 18432
    assert step["actual"] == 32 * (2 * forward + weight_grad)
    assert step["dense_equivalent"] == 32 * 3 * 2 * (1152 + 2560 + 18432)
