"""SparseLinear / SparseConv2d / sparsify: dense equivalence, state, layout updates, compile."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import CPU_BACKENDS, tolerances
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparcl_kernels as sk
from sparcl_kernels.nn import SparseConv2d, SparseLinear, plan_sparsify
from sparcl_kernels.nn.conv import conv_weight_to_gemm


@pytest.fixture
def forced_backend(backend, monkeypatch):
    """Every layer op on one CPU backend (the cpu backend once per instruction set)."""
    monkeypatch.setenv("SPARCL_BACKEND", backend)
    return backend


def _compare_with_dense(sparse: nn.Module, x: torch.Tensor, to_gemm=lambda w: w):
    """Outputs and all gradients of a sparse layer equal those of its masked dense twin."""
    dense = sparse.to_dense()
    x_sparse = x.detach().clone().requires_grad_()
    x_dense = x.detach().clone().requires_grad_()
    y_sparse, y_dense = sparse(x_sparse), dense(x_dense)
    grad_out = torch.randn_like(y_dense)
    y_sparse.backward(grad_out)
    y_dense.backward(grad_out)
    tol = tolerances(x.dtype, 2048)
    torch.testing.assert_close(y_sparse, y_dense, **tol)
    torch.testing.assert_close(x_sparse.grad, x_dense.grad, **tol)
    expected_values_grad = sparse.layout.to_blocks(to_gemm(dense.weight.grad))
    if sparse.grad_block_mask is not None:
        expected_values_grad = expected_values_grad * sparse.grad_block_mask.view(-1, 1, 1)
    torch.testing.assert_close(sparse.values.grad, expected_values_grad, **tol)
    if sparse.bias is not None:
        torch.testing.assert_close(sparse.bias.grad, dense.bias.grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_dense(forced_backend, dtype, bias):
    torch.manual_seed(0)
    layer = SparseLinear(64, 96, bias=bias, block_size=(16, 32), sparsity=0.6, dtype=dtype)
    layer.set_grad_block_mask(torch.rand(layer.values.shape[0]) < 0.5)
    _compare_with_dense(layer, torch.randn(3, 5, 64, dtype=dtype))


CONV_CASES = [
    # in, out, kernel, stride, padding, dilation, H, W
    (32, 32, 3, 1, 1, 1, 8, 8),
    (16, 32, 3, 2, 1, 1, 9, 7),
    (16, 16, (3, 1), (1, 2), (2, 0), (2, 1), 7, 6),
    (32, 16, 1, 1, 0, 1, 5, 5),
    (16, 16, 5, 3, 2, 1, 11, 4),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sparse_conv_equals_dense(forced_backend, case, dtype):
    cin, cout, kernel, stride, padding, dilation, h, w = case
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=True).to(dtype)
    layer = SparseConv2d.from_dense(conv, sparsity=0.5, block_size=(8, 8))
    layer.set_grad_block_mask(torch.rand(layer.values.shape[0]) < 0.7)
    _compare_with_dense(layer, torch.randn(3, cin, h, w, dtype=dtype), conv_weight_to_gemm)


@pytest.mark.parametrize("block_size", [(4, 4), (16, 16), (32, 16), (16, 32), (32, 32), (24, 8)])
@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_conv_block_sizes(forced_backend, block_size, stride):
    """Block sides that select each vector width (4, 8, 16) and tile edge of the kernels."""
    torch.manual_seed(3)
    conv = nn.Conv2d(32, 96, 3, stride, 1, bias=True)
    layer = SparseConv2d.from_dense(conv, sparsity=0.4, block_size=block_size)
    layer.set_grad_block_mask(torch.rand(layer.values.shape[0]) < 0.7)
    _compare_with_dense(layer, torch.randn(2, 32, 7, 9), conv_weight_to_gemm)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=str)
def test_sparse_conv_output_is_channels_last_whatever_the_input(memory_format):
    """The documented output format: channels-last strides (the kernels' own, no copy)."""
    layer = SparseConv2d.from_dense(nn.Conv2d(16, 32, 3, 2, 1), 0.5, 8)
    x = torch.randn(2, 16, 9, 7).to(memory_format=memory_format)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, layer.to_dense()(x), atol=1e-5, rtol=1e-4)


class _ResidualNet(nn.Module):
    """Stem, a stride-2 residual block with a 1x1 shortcut, an identity block, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.a1, self.a2 = nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.Conv2d(32, 32, 3, 1, 1)
        self.bn_a1, self.bn_a2 = nn.BatchNorm2d(32), nn.BatchNorm2d(32)
        self.shortcut = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
        self.b1, self.b2 = nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.Conv2d(32, 32, 3, 1, 1)
        self.bn_b1, self.bn_b2 = nn.BatchNorm2d(32), nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        out = torch.relu(self.bn_a1(self.a1(x)))
        x = torch.relu(self.bn_a2(self.a2(out)) + self.shortcut(x))
        out = torch.relu(self.bn_b1(self.b1(x)))
        x = torch.relu(self.bn_b2(self.b2(out)) + x)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("convert", ["sparsify", "from_dense"])
@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=str)
def test_swapped_residual_model_equals_its_dense_twin(convert, input_format):
    """Outputs and every gradient, whatever the input's memory format and however swapped."""
    torch.manual_seed(4)
    dense = _ResidualNet()
    sparse = copy.deepcopy(dense)
    names = ["a1", "a2", "b1", "b2"]
    if convert == "sparsify":
        sk.sparsify(sparse, 0.5, 8, include=names)
    else:
        for name in names:
            setattr(sparse, name, SparseConv2d.from_dense(getattr(sparse, name), 0.5, 8))
    # The dense twin: the same model with the swapped weights written back as dense convs.
    for name in names:
        setattr(dense, name, getattr(sparse, name).to_dense())
    x = torch.randn(4, 3, 10, 10).to(memory_format=input_format)
    out_sparse, out_dense = sparse(x), dense(x)
    torch.testing.assert_close(out_sparse, out_dense, atol=1e-4, rtol=1e-4)
    grad = torch.randn_like(out_dense)
    out_sparse.backward(grad)
    out_dense.backward(grad)
    dense_params = dict(dense.named_parameters())
    for name, param in sparse.named_parameters():
        if name.endswith(".values"):
            module = getattr(sparse, name.split(".")[0])
            expected = module.layout.to_blocks(
                conv_weight_to_gemm(dense_params[name.replace(".values", ".weight")].grad)
            )
        else:
            expected = dense_params[name].grad
        torch.testing.assert_close(param.grad, expected, atol=1e-4, rtol=1e-4, msg=name)


def test_sparsify_makes_conv_models_channels_last_unless_told_not_to():
    model = sk.sparsify(_ResidualNet(), 0.5, 8, include=["a1"], inplace=False)
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    kept = sk.sparsify(_ResidualNet(), 0.5, 8, include=["a1"], memory_format=None)
    assert kept.stem[0].weight.is_contiguous()
    linear_only = sk.sparsify(_ResidualNet(), 0.5, 8, include=["head"])
    assert isinstance(linear_only.head, SparseLinear)
    assert linear_only.stem[0].weight.is_contiguous()  # no conv swapped: format untouched


def test_sparse_conv_accepts_channels_last_and_returns_channels_last_strides():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    layer = SparseConv2d.from_dense(conv, 0.5, 8)
    x = torch.randn(2, 16, 6, 6).to(memory_format=torch.channels_last)
    y = layer(x)
    assert y.shape == (2, 16, 6, 6)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, layer.to_dense()(x), atol=1e-5, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    cin=st.sampled_from([8, 16]),
    cout=st.sampled_from([8, 16, 24]),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    size=st.integers(3, 9),
    batch=st.integers(1, 3),
    density=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    backend=st.sampled_from(CPU_BACKENDS),
)
def test_property_conv_op(
    cin, cout, kernel, stride, padding, dilation, size, batch, density, dtype, backend
):
    """Output, input gradient and weight gradient against F.conv2d on the dense weight."""
    if size + 2 * padding < dilation * (kernel - 1) + 1:
        return  # no output pixel
    generator = torch.Generator().manual_seed(cin * cout + size)
    mask = torch.rand(cout // 8, kernel * kernel * cin // 8, generator=generator) < density
    layout = sk.BlockLayout.from_block_mask(mask, 8)
    values = torch.randn(layout.values_shape, generator=generator, dtype=dtype)
    x = torch.randn(batch, cin, size, size, generator=generator, dtype=dtype)
    geometry = ((kernel, kernel), (stride, stride), (padding, padding), (dilation, dilation))
    values_dense = values.clone().requires_grad_()
    x_dense = x.clone().requires_grad_()
    weight = layout.to_dense(values_dense).view(cout, kernel, kernel, cin).permute(0, 3, 1, 2)
    expected = torch.nn.functional.conv2d(
        x_dense, weight, stride=stride, padding=padding, dilation=dilation
    )
    values.requires_grad_()
    x.requires_grad_()
    actual = sk.ops.block_sparse_conv2d(x, values, layout, *geometry, backend=backend)
    grad_out = torch.randn(expected.shape, generator=generator, dtype=dtype)
    expected.backward(grad_out)
    actual.backward(grad_out)
    tol = tolerances(dtype, 9 * 16 * 9 * batch)
    torch.testing.assert_close(actual, expected, **tol)
    torch.testing.assert_close(x.grad, x_dense.grad, **tol)
    torch.testing.assert_close(values.grad, values_dense.grad, **tol)


def test_conv_gradcheck_cpu_native_fp64():
    torch.manual_seed(2)
    layout = sk.BlockLayout.from_block_mask(torch.rand(2, 9) < 0.6, (4, 4))
    values = torch.randn(layout.values_shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True)

    def fn(x, values, bias):
        return sk.ops.block_sparse_conv2d(
            x, values, layout, (3, 3), (2, 2), (1, 1), bias=bias, backend="cpu"
        )

    assert torch.autograd.gradcheck(fn, (x, values, bias))


def test_conv_rejects_mismatched_layout():
    layout = sk.BlockLayout.from_dense(torch.randn(16, 9 * 16), 8, 0.5)
    values = torch.randn(layout.values_shape)
    with pytest.raises(ValueError, match="block_sparse_conv2d: layout shape"):
        sk.ops.block_sparse_conv2d(torch.randn(1, 8, 5, 5), values, layout, (3, 3))


def test_conv_requires_bk_dividing_channels():
    with pytest.raises(ValueError, match="bk dividing in_channels"):
        SparseConv2d(24, 32, 3, block_size=(16, 16))


# ---------------------------------------------------------------- state and representation


LAYER_FACTORIES = [
    lambda: SparseLinear(64, 32, block_size=16, sparsity=0.5),
    lambda: SparseConv2d(16, 32, 3, padding=1, block_size=8, sparsity=0.7),
]


@pytest.mark.parametrize("make", LAYER_FACTORIES, ids=["linear", "conv"])
def test_state_dict_round_trip_including_layout(make):
    torch.manual_seed(3)
    source, target = make(), make()
    grid = source.layout.block_grid
    source.set_block_mask(torch.rand(grid) < 0.3, optimizer=None)  # a different nnz than target's
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer))
    assert target.layout == source.layout
    assert torch.equal(target.values, source.values)
    x = torch.randn(2, 64) if isinstance(source, SparseLinear) else torch.randn(2, 16, 5, 5)
    assert torch.equal(target(x), source(x))


def test_extra_repr_shows_sparsity_and_block_size():
    text = repr(SparseLinear(64, 64, block_size=(16, 32), sparsity=0.75))
    assert "block_size=(16, 32)" in text and "sparsity=0.750" in text


def test_module_to_moves_layout():
    layer = SparseLinear(32, 32, block_size=8, sparsity=0.5).to(torch.float64)
    assert layer.values.dtype == torch.float64
    meta = SparseLinear(32, 32, block_size=8, sparsity=0.5).to("meta")
    assert meta.layout.device.type == "meta"


# ---------------------------------------------------------------- layout updates


def _train_step(layer, optimizer, x):
    optimizer.zero_grad()
    layer(x).square().sum().backward()
    optimizer.step()


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), lambda p: torch.optim.Adam(p, lr=0.01)],
    ids=["sgd-momentum", "adam"],
)
def test_layout_update_keeps_untouched_blocks_and_optimizer_state(make_optimizer):
    torch.manual_seed(4)
    layer = SparseLinear(64, 64, block_size=16, sparsity=0.5)
    optimizer = make_optimizer(layer.parameters())
    x = torch.randn(8, 64)
    _train_step(layer, optimizer, x)
    old = layer.layout
    old_values = layer.values.detach().clone()
    old_state = {k: v.clone() for k, v in optimizer.state[layer.values].items()}
    storage = layer.values.data_ptr()

    prune = torch.zeros(old.nnz, dtype=torch.bool)
    prune[[0, 3]] = True
    free = (~old.block_mask()).nonzero()[:2]
    layer.update_blocks(prune=prune, grow=free, optimizer=optimizer)

    new = layer.layout
    assert new.nnz == old.nnz
    assert layer.values.data_ptr() == storage  # constant nnz: no re-allocation
    old_positions = zip(old.row_indices.tolist(), old.col_indices.tolist(), strict=True)
    old_ids = {position: i for i, position in enumerate(old_positions)}
    grown = {tuple(p) for p in free.tolist()}
    state = optimizer.state[layer.values]
    for j, (r, c) in enumerate(
        zip(new.row_indices.tolist(), new.col_indices.tolist(), strict=True)
    ):
        if (r, c) in grown:
            assert torch.all(layer.values[j] == 0)
            for key, value in state.items():
                if value.shape == layer.values.shape:
                    assert torch.all(value[j] == 0), key
        else:
            i = old_ids[(r, c)]
            assert torch.equal(layer.values[j], old_values[i])
            for key, value in state.items():
                if value.shape == layer.values.shape:
                    assert torch.equal(value[j], old_state[key][i]), key
    _train_step(layer, optimizer, x)  # training continues with the remapped state


def test_update_blocks_rejects_growing_stored_positions():
    layer = SparseLinear(32, 32, block_size=8, sparsity=0.5)
    stored = layer.layout.block_mask().nonzero()[:1]
    with pytest.raises(ValueError, match="already stored"):
        layer.update_blocks(grow=stored, optimizer=None)


def test_set_block_mask_changing_nnz():
    layer = SparseLinear(32, 32, block_size=8, sparsity=0.5)
    mask = torch.ones(4, 4, dtype=torch.bool)
    layer.set_block_mask(mask, optimizer=None)
    assert layer.values.shape == (16, 8, 8)
    assert layer.sparsity == 0.0


# ---------------------------------------------------------------- sparsify


class _SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 1))
        self.odd = nn.Conv2d(32, 30, 3, padding=1)
        self.grouped = nn.Conv2d(30, 30, 3, padding=1, groups=3)
        self.head = nn.Linear(30, 16)

    def forward(self, x):
        x = self.grouped(self.odd(self.body(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_sparsify_swaps_eligible_layers_and_reports_the_rest():
    torch.manual_seed(5)
    model = _SmallNet()
    x = torch.randn(2, 3, 8, 8)
    reference = model(x)
    plan = {d.name: d for d in plan_sparsify(model, block_size=8, exclude=["stem"])}
    assert plan["stem"].reason == "excluded"
    assert not plan["odd"].sparse and "not divisible" in plan["odd"].reason
    assert not plan["grouped"].sparse and "groups=3" in plan["grouped"].reason
    assert plan["body.0"].sparse and plan["body.2"].sparse
    sparse_model = sk.sparsify(model, sparsity=0.0, block_size=8, exclude=["stem"], inplace=False)
    assert isinstance(sparse_model.body[0], SparseConv2d)
    assert isinstance(sparse_model.body[2], SparseConv2d)
    assert isinstance(sparse_model.stem, nn.Conv2d) and not isinstance(model.body[0], SparseConv2d)
    # Density 1.0 (sparsity 0): the swapped model computes the same function.
    torch.testing.assert_close(sparse_model(x), reference, atol=1e-5, rtol=1e-4)


def test_sparsify_mlp_in_place_with_include_patterns():
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    sk.sparsify(mlp, sparsity=0.75, block_size=16, include=["0"])
    assert isinstance(mlp[0], SparseLinear) and isinstance(mlp[2], nn.Linear)
    assert mlp[0].sparsity == 0.75
    mlp(torch.randn(4, 64)).sum().backward()
    assert mlp[0].values.grad is not None


# ---------------------------------------------------------------- torch.compile


def test_compiled_model_with_sparse_layers_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(6)
    model = nn.Sequential(
        SparseConv2d(8, 16, 3, padding=1, block_size=8, sparsity=0.5),
        nn.ReLU(),
        nn.Flatten(),
        SparseLinear(16 * 4 * 4, 16, block_size=16, sparsity=0.5),
    )
    x = torch.randn(2, 8, 4, 4)
    compiled = torch.compile(model, fullgraph=True)
    eager_out = model(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled_out = compiled(x)
    compiled_out.sum().backward()
    torch.testing.assert_close(compiled_out, eager_out)
    for p, g in zip(model.parameters(), eager_grads, strict=True):
        torch.testing.assert_close(p.grad, g)


class _MixedNet(nn.Module):
    """Dense and block-sparse Linear and Conv2d layers in one model."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = SparseConv2d(16, 32, 3, padding=1, block_size=8, sparsity=0.5)
        self.dense = nn.Linear(32, 32)
        self.head = SparseLinear(32, 16, block_size=8, sparsity=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv(torch.relu(self.stem(x))))
        return self.head(torch.relu(self.dense(out.mean((2, 3)))))


def _dense_twin(net: _MixedNet) -> nn.Module:
    twin = copy.deepcopy(net)
    twin.conv, twin.head = net.conv.to_dense(), net.head.to_dense()
    return twin


@pytest.mark.parametrize(
    ("device", "dtype"),
    [
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.bfloat16, marks=pytest.mark.gpu),
        pytest.param("cuda", torch.float16, marks=pytest.mark.gpu),
    ],
    ids=["cpu-bf16", "cuda-bf16", "cuda-fp16"],
)
def test_mixed_model_trains_under_autocast_like_its_dense_twin(device, dtype):
    torch.manual_seed(5)
    net = _MixedNet().to(device)
    twin = _dense_twin(net)
    x = torch.randn(4, 3, 8, 8, device=device)
    target = torch.randn(4, 16, device=device)
    losses = []
    for model in (net, twin):
        with torch.autocast(device, dtype=dtype):
            loss = nn.functional.mse_loss(model(x).float(), target)
        loss.backward()
        losses.append(loss)
    tol = {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(losses[0], losses[1], **tol)
    assert net.head.values.dtype == torch.float32 and net.head.values.grad.dtype == torch.float32
    expected = net.head.layout.to_blocks(twin.head.weight.grad)
    torch.testing.assert_close(net.head.values.grad, expected, **tol)
    expected = net.conv.layout.to_blocks(conv_weight_to_gemm(twin.conv.weight.grad))
    torch.testing.assert_close(net.conv.values.grad, expected, **tol)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    optimizer.step()  # fp32 master values take the step
    assert torch.isfinite(net.head.values).all()


# ---------------------------------------------------------------- no silent wrong state (26)


@pytest.mark.parametrize("change", ["set_block_mask", "update_blocks"])
def test_layout_change_requires_an_explicit_optimizer(change):
    """Left out, a grown block kept another block's Adam moments and moved on a zero gradient."""
    torch.manual_seed(5)
    layer = SparseLinear(32, 32, block_size=8, sparsity=0.5)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.01)
    _train_step(layer, optimizer, torch.randn(4, 32))
    before = layer.values.detach().clone()
    mask = layer.layout.block_mask()
    free, stored = (~mask).nonzero()[:1], mask.nonzero()[:1]
    new_mask = mask.clone()
    new_mask[tuple(free[0])], new_mask[tuple(stored[0])] = True, False

    def apply(**kwargs):
        if change == "set_block_mask":
            layer.set_block_mask(new_mask, **kwargs)
        else:
            layer.update_blocks(prune=torch.tensor([0]), grow=free, **kwargs)

    with pytest.raises(TypeError, match="optimizer="):
        apply()
    assert torch.equal(layer.values, before)  # nothing changed
    with pytest.raises(ValueError, match="does not optimise"):
        apply(optimizer=torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]))
    apply(optimizer=optimizer)
    layer.values.grad = torch.zeros_like(layer.values)
    grown = layer.values.detach() == 0
    optimizer.step()  # zero gradient, zeroed moments: grown blocks stay at zero
    assert torch.all(layer.values[grown.flatten(1).all(1)] == 0)


def test_partial_load_of_another_layout_without_values_is_refused():
    source = SparseLinear(32, 32, block_size=8, sparsity=0.25)
    target = SparseLinear(32, 32, block_size=8, sparsity=0.75)
    state = {k: v for k, v in source.state_dict().items() if k != "values"}
    before = target.values.detach().clone()
    with pytest.raises(RuntimeError, match="'values' is missing"):
        target.load_state_dict(state, strict=False)
    assert torch.equal(target.values, before) and torch.equal(
        target.block_mask, target.layout.block_mask()
    )
    same_layout = {k: v for k, v in target.state_dict().items() if k != "values"}
    result = target.load_state_dict(same_layout, strict=False)  # nothing to adopt: fine
    assert result.missing_keys == ["values"]


@pytest.mark.parametrize("kernel_size", [(0, 3), (3, 0)])
def test_conv_with_an_empty_kernel_fails_at_construction(kernel_size):
    with pytest.raises(ValueError, match="SparseConv2d: kernel_size"):
        SparseConv2d(8, 8, kernel_size, block_size=8, sparsity=0.5)
