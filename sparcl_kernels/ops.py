"""Autograd-aware block-sparse ops.

Three passes (forward, input gradient, weight gradient) serve both the linear and the
convolution. Each is registered as a ``torch.library`` custom op, with autograd on the forward
op calling the other two, so ``torch.compile``/``torch.export`` and dispatch modes (fake
tensors, FLOP counters) see opaque ops with fake implementations and trace forward and
backward without graph breaks. A plain eager call runs the same passes through a
``torch.autograd.Function`` instead: the custom-op wrapper costs ~0.35 ms per layer call
(forward + backward; pytree flattening and Python re-dispatch), more than some sparse kernels
take (bench/RESULTS.md, issue 15). Argument checks live here, at the public boundary; kernels
receive checked, contiguous operands and a :class:`~sparcl_kernels.layout.BlockLayout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import torch
from torch import Tensor, nn

from sparcl_kernels.backends import backend_for_block_size, get_backend, resolve_backend
from sparcl_kernels.geometry import ConvGeometry
from sparcl_kernels.layout import BlockLayout

__all__ = ["block_sparse_conv2d", "block_sparse_linear"]


def _layout(block_size: tuple[int, int], index: list[Tensor]) -> BlockLayout:
    """The layout of the five index tensors (in ``BlockLayout.tensors()`` order)."""
    row_offsets, _, _, transpose_offsets, _ = index
    bm, bk = block_size
    shape = ((row_offsets.numel() - 1) * bm, (transpose_offsets.numel() - 1) * bk)
    return BlockLayout(shape, (bm, bk), *index)


# ---------------------------------------------------------------- the three passes
#
# ``geometry == []`` is the linear; otherwise a ConvGeometry's eight ints (activations
# channels-last).


def _forward_pass(
    x: Tensor,
    values: Tensor,
    layout: BlockLayout,
    bias: Tensor | None,
    geometry: list[int],
    backend: str,
) -> Tensor:
    kernels = get_backend(backend)
    x, values = x.contiguous(), values.contiguous()
    if not geometry:
        return kernels.forward(x, values, layout, bias)
    return kernels.conv_forward(x, values, layout, bias, ConvGeometry(*geometry))


def _grad_input_pass(
    grad_out: Tensor,
    values: Tensor,
    layout: BlockLayout,
    geometry: list[int],
    input_shape: list[int],
    backend: str,
) -> Tensor:
    kernels = get_backend(backend)
    grad_out, values = grad_out.contiguous(), values.contiguous()
    if not geometry:
        return kernels.grad_input(grad_out, values, layout)
    in_hw = (input_shape[1], input_shape[2])
    return kernels.conv_grad_input(grad_out, values, layout, ConvGeometry(*geometry), in_hw)


def _grad_weight_pass(
    grad_out: Tensor,
    x: Tensor,
    layout: BlockLayout,
    grad_block_mask: Tensor | None,
    geometry: list[int],
    backend: str,
) -> Tensor:
    kernels = get_backend(backend)
    grad_out, x = grad_out.contiguous(), x.contiguous()
    if not geometry:
        return kernels.grad_weight(grad_out, x, layout, grad_block_mask)
    return kernels.conv_grad_weight(grad_out, x, layout, grad_block_mask, ConvGeometry(*geometry))


# ---------------------------------------------------------------- derivatives of every order
#
# The three passes are the three partial derivatives of one bilinear form <g, conv(x, W)> (the
# linear is the 1x1 case): forward = d/dg, grad_input = d/dx, grad_weight = d/dW. So the
# vector-Jacobian product of each pass is made of the passes themselves, and derivatives of
# any order (gradient penalties, Hessian-vector products) are exact with no other kernel. A
# pass is applied along one of four routes: "op" (the torch.library custom ops, while traced),
# "eager" (autograd Functions, plain calls), "func" (the same Functions in the form torch.func
# needs) and "raw" (kernels without autograd: a backward pass that builds no graph).


@dataclass(frozen=True)
class _Spec:
    """What a pass needs besides its tensors: ``geometry == []`` is the linear."""

    layout: BlockLayout
    geometry: list[int]
    backend: str


def _call_forward(route: str, spec: _Spec, x, values, bias=None, mask=None) -> Tensor:
    if route == "raw":
        return _forward_pass(x, values, spec.layout, bias, spec.geometry, spec.backend)
    if route == "op":
        index = spec.layout.tensors()
        return _forward_op(x, values, index, bias, mask, spec.geometry, spec.backend)
    return _FUNCTIONS[route][0].apply(x, values, bias, mask, spec)


def _call_grad_input(route: str, spec: _Spec, grad_out, values, input_shape) -> Tensor:
    shape = list(input_shape)
    if route == "raw":
        return _grad_input_pass(grad_out, values, spec.layout, spec.geometry, shape, spec.backend)
    if route == "op":
        index = spec.layout.tensors()
        return _grad_input_op(grad_out, values, index, spec.geometry, shape, spec.backend)
    return _FUNCTIONS[route][1].apply(grad_out, values, shape, spec)


def _call_grad_weight(route: str, spec: _Spec, grad_out, x, mask) -> Tensor:
    if route == "raw":
        return _grad_weight_pass(grad_out, x, spec.layout, mask, spec.geometry, spec.backend)
    if route == "op":
        index, block = spec.layout.tensors(), list(spec.layout.block_size)
        return _grad_weight_op(grad_out, x, index, mask, block, spec.geometry, spec.backend)
    return _FUNCTIONS[route][2].apply(grad_out, x, mask, spec)


def _forward_vjp(route, spec, needs, grad, x, values, mask, has_bias):
    """(d x, d values, d bias) of ``forward(x, values) + bias`` for the output gradient."""
    grad = grad.contiguous()
    dx = _call_grad_input(route, spec, grad, values, x.shape) if needs[0] else None
    dvalues = _call_grad_weight(route, spec, grad, x, mask) if needs[1] else None
    dbias = grad.sum(dim=tuple(range(grad.dim() - 1))) if has_bias and needs[2] else None
    return dx, dvalues, dbias


def _grad_input_vjp(route, spec, needs, grad, grad_out, values):
    """(d grad_out, d values) of ``grad_input(grad_out, values)``: its transpose is forward."""
    grad = grad.contiguous()
    dgrad_out = _call_forward(route, spec, grad, values) if needs[0] else None
    dvalues = _call_grad_weight(route, spec, grad_out, grad, None) if needs[1] else None
    return dgrad_out, dvalues


def _grad_weight_vjp(route, spec, needs, grad, grad_out, x, mask):
    """(d grad_out, d x) of the masked ``grad_weight(grad_out, x)``: masked blocks are constant
    zeros, so their incoming gradient is dropped."""
    if mask is not None:
        grad = grad * mask.view(-1, 1, 1).to(grad.dtype)
    grad = grad.contiguous()
    dgrad_out = _call_forward(route, spec, x, grad) if needs[0] else None
    dx = _call_grad_input(route, spec, grad_out, grad, x.shape) if needs[1] else None
    return dgrad_out, dx


# ---------------------------------------------------------------- custom ops (traced calls)


@torch.library.custom_op("sparcl_kernels::forward", mutates_args=())
def _forward_op(
    x: Tensor,
    values: Tensor,
    index: list[Tensor],
    bias: Tensor | None,
    grad_block_mask: Tensor | None,
    geometry: list[int],
    backend: str,
) -> Tensor:
    # grad_block_mask is unused here; it is an input so that autograd can save it.
    return _forward_pass(x, values, _layout(values.shape[1:], index), bias, geometry, backend)


@_forward_op.register_fake
def _(x, values, index, bias, grad_block_mask, geometry, backend):
    out_features = (index[0].shape[0] - 1) * values.shape[1]
    if not geometry:
        return x.new_empty(x.shape[0], out_features)
    out_h, out_w = ConvGeometry(*geometry).output_size((x.shape[1], x.shape[2]))
    return x.new_empty(x.shape[0], out_h, out_w, out_features)


@torch.library.custom_op("sparcl_kernels::grad_input", mutates_args=())
def _grad_input_op(
    grad_out: Tensor,
    values: Tensor,
    index: list[Tensor],
    geometry: list[int],
    input_shape: list[int],
    backend: str,
) -> Tensor:
    layout = _layout(values.shape[1:], index)
    return _grad_input_pass(grad_out, values, layout, geometry, input_shape, backend)


@_grad_input_op.register_fake
def _(grad_out, values, index, geometry, input_shape, backend):
    return grad_out.new_empty(input_shape)


@torch.library.custom_op("sparcl_kernels::grad_weight", mutates_args=())
def _grad_weight_op(
    grad_out: Tensor,
    x: Tensor,
    index: list[Tensor],
    grad_block_mask: Tensor | None,
    block_size: list[int],
    geometry: list[int],
    backend: str,
) -> Tensor:
    layout = _layout(block_size, index)
    return _grad_weight_pass(grad_out, x, layout, grad_block_mask, geometry, backend)


@_grad_weight_op.register_fake
def _(grad_out, x, index, grad_block_mask, block_size, geometry, backend):
    # bf16 operands on the cpu backend are the mixed-precision passes: fp32 master gradient.
    mixed = backend == "cpu" and x.dtype == torch.bfloat16
    return x.new_empty(index[1].shape[0], *block_size, dtype=torch.float32 if mixed else None)


def _spec_of(block_size, index, geometry, backend) -> _Spec:
    return _Spec(_layout(tuple(block_size), list(index)), list(geometry), backend)


def _no_grad(value: list) -> list | None:
    """The gradient of a non-differentiable list input, in the structure torch.library expects:
    a list of tensors (the empty list counts as one) takes a list of Nones, others None."""
    return [None] * len(value) if all(isinstance(v, Tensor) for v in value) else None


def _forward_op_context(ctx, inputs, output) -> None:
    x, values, index, bias, grad_block_mask, geometry, backend = inputs
    ctx.save_for_backward(x, values, grad_block_mask)
    ctx.spec = _spec_of(values.shape[1:], index, geometry, backend)
    ctx.has_bias, ctx.n_index = bias is not None, len(index)


def _forward_op_backward(ctx, grad: Tensor):
    x, values, mask = ctx.saved_tensors
    needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3])
    dx, dvalues, dbias = _forward_vjp("op", ctx.spec, needs, grad, x, values, mask, ctx.has_bias)
    return dx, dvalues, [None] * ctx.n_index, dbias, None, _no_grad(ctx.spec.geometry), None


def _grad_input_op_context(ctx, inputs, output) -> None:
    grad_out, values, index, geometry, input_shape, backend = inputs
    ctx.save_for_backward(grad_out, values)
    ctx.spec = _spec_of(values.shape[1:], index, geometry, backend)
    ctx.n_index, ctx.input_shape = len(index), list(input_shape)


def _grad_input_op_backward(ctx, grad: Tensor):
    grad_out, values = ctx.saved_tensors
    needs = ctx.needs_input_grad[:2]
    dgrad_out, dvalues = _grad_input_vjp("op", ctx.spec, needs, grad, grad_out, values)
    geometry = _no_grad(ctx.spec.geometry)
    return dgrad_out, dvalues, [None] * ctx.n_index, geometry, _no_grad(ctx.input_shape), None


def _grad_weight_op_context(ctx, inputs, output) -> None:
    grad_out, x, index, grad_block_mask, block_size, geometry, backend = inputs
    ctx.save_for_backward(grad_out, x, grad_block_mask)
    ctx.spec = _spec_of(block_size, index, geometry, backend)
    ctx.n_index, ctx.block_size = len(index), list(block_size)


def _grad_weight_op_backward(ctx, grad: Tensor):
    grad_out, x, mask = ctx.saved_tensors
    needs = ctx.needs_input_grad[:2]
    dgrad_out, dx = _grad_weight_vjp("op", ctx.spec, needs, grad, grad_out, x, mask)
    geometry, block = _no_grad(ctx.spec.geometry), _no_grad(ctx.block_size)
    return dgrad_out, dx, [None] * ctx.n_index, None, block, geometry, None


_forward_op.register_autograd(_forward_op_backward, setup_context=_forward_op_context)
_grad_input_op.register_autograd(_grad_input_op_backward, setup_context=_grad_input_op_context)
_grad_weight_op.register_autograd(_grad_weight_op_backward, setup_context=_grad_weight_op_context)


# ---------------------------------------------------------------- eager and torch.func calls


def _save_forward(ctx, x, values, bias, mask, spec) -> None:
    ctx.save_for_backward(x, values, mask)
    ctx.spec, ctx.has_bias = spec, bias is not None


def _forward_backward(ctx, route: str, grad: Tensor):
    x, values, mask = ctx.saved_tensors
    needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
    dx, dvalues, dbias = _forward_vjp(route, ctx.spec, needs, grad, x, values, mask, ctx.has_bias)
    return dx, dvalues, dbias, None, None


def _save_grad_input(ctx, grad_out, values, input_shape, spec) -> None:
    ctx.save_for_backward(grad_out, values)
    ctx.spec = spec


def _grad_input_backward(ctx, route: str, grad: Tensor):
    grad_out, values = ctx.saved_tensors
    needs = ctx.needs_input_grad[:2]
    return (*_grad_input_vjp(route, ctx.spec, needs, grad, grad_out, values), None, None)


def _save_grad_weight(ctx, grad_out, x, mask, spec) -> None:
    ctx.save_for_backward(grad_out, x, mask)
    ctx.spec = spec


def _grad_weight_backward(ctx, route: str, grad: Tensor):
    grad_out, x, mask = ctx.saved_tensors
    needs = ctx.needs_input_grad[:2]
    return (*_grad_weight_vjp(route, ctx.spec, needs, grad, grad_out, x, mask), None, None)


def _compute_forward(x, values, bias, mask, spec):
    return _call_forward("raw", spec, x, values, bias)


def _compute_grad_input(grad_out, values, input_shape, spec):
    return _call_grad_input("raw", spec, grad_out, values, input_shape)


def _compute_grad_weight(grad_out, x, mask, spec):
    return _call_grad_weight("raw", spec, grad_out, x, mask)


def _functions(name: str, compute, save, backward) -> tuple[type, type]:
    """The eager and the torch.func autograd Function of one pass.

    Eager: old-style ``forward(ctx, ...)`` (with a separate ``setup_context``, ``apply`` binds
    the arguments through ``inspect.signature`` on every call, ~60 us); its backward runs the
    raw kernels unless it must build a graph (``create_graph=True``). torch.func needs the
    ``setup_context`` form, and its backward always stays differentiable (nested transforms).
    """

    def eager_forward(ctx, *args):
        save(ctx, *args)
        return compute(*args)

    def eager_backward(ctx, grad):
        return backward(ctx, "eager" if torch.is_grad_enabled() else "raw", grad)

    eager = type(
        f"_Eager{name}",
        (torch.autograd.Function,),
        {"forward": staticmethod(eager_forward), "backward": staticmethod(eager_backward)},
    )
    func = type(
        f"_Func{name}",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(compute),
            "setup_context": staticmethod(lambda ctx, inputs, output: save(ctx, *inputs)),
            "backward": staticmethod(lambda ctx, grad: backward(ctx, "func", grad)),
        },
    )
    return eager, func


_PASSES = (
    _functions("Forward", _compute_forward, _save_forward, _forward_backward),
    _functions("GradInput", _compute_grad_input, _save_grad_input, _grad_input_backward),
    _functions("GradWeight", _compute_grad_weight, _save_grad_weight, _grad_weight_backward),
)
# route -> (forward, grad_input, grad_weight) Functions
_FUNCTIONS = {route: tuple(p[i] for p in _PASSES) for i, route in enumerate(("eager", "func"))}

_PLAIN_TENSOR_TYPES = (Tensor, nn.Parameter)


def _route(*tensors: Tensor | None) -> str:
    """How a call runs: "op" while torch.compile or torch.export trace, under a dispatch mode
    (fake tensors, make_fx, FLOP counters) and for tensor subclasses, which rely on the op's
    registrations; "func" under torch.func transforms; "eager" otherwise."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return "op"
    if any(t is not None and type(t) not in _PLAIN_TENSOR_TYPES for t in tensors):
        return "op"
    if torch._C._are_functorch_transforms_active():
        return "func"
    return "eager"


def _apply_forward(
    x: Tensor,
    values: Tensor,
    layout: BlockLayout,
    bias: Tensor | None,
    grad_block_mask: Tensor | None,
    geometry: list[int],
    backend: str,
) -> Tensor:
    """The forward pass with autograd of every order, along the route ``_route`` picks."""
    route = _route(x, values, bias, grad_block_mask)
    spec = _Spec(layout, geometry, backend)
    return _call_forward(route, spec, x, values, bias, grad_block_mask)


def block_sparse_linear(
    x: Tensor,
    values: Tensor,
    layout: BlockLayout,
    bias: Tensor | None = None,
    grad_block_mask: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """``y = x @ W.T + bias`` where ``W = layout.to_dense(values)``, computing only stored blocks.

    Args:
        x: input ``[..., K]``; any leading dims, need not be contiguous.
        values: the stored blocks ``[nnz, bm, bk]``, same dtype and device as ``x``.
        layout: the :class:`BlockLayout` of ``W`` (shape ``[M, K]``), on ``x``'s device.
        bias: optional ``[M]``.
        grad_block_mask: optional bool ``[nnz]``. Blocks where it is False get an exactly-zero
            weight gradient and their weight-gradient work is skipped. The input and bias
            gradients are never masked.
        backend: ``None`` (``$SPARCL_BACKEND``, else the device default), ``"reference"``,
            ``"cpu"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``[..., M]``. Gradients flow to ``x``, ``values`` and ``bias``.

    Under ``torch.autocast`` the operands are cast as for ``nn.Linear`` (see
    :func:`_autocast_operands`), so fp32 values act as master weights; under CPU bf16 autocast
    the ``cpu`` backend's bf16 kernels run the layer where the CPU has them
    (``sparcl_kernels.backends.cpu.select_bf16_kernels``), as they do the convolution.
    """
    bf16_kernels = isinstance(layout, BlockLayout) and _runs_cpu_bf16_kernels(
        x, backend, layout.block_size
    )
    x, values, bias = _autocast_operands(x, values, bias, bf16_kernels)
    _check_arguments(x, values, layout, bias, grad_block_mask, mixed_bf16=bf16_kernels)
    name = _select_backend(backend, x.device, values.dtype, layout.block_size)
    m, k = layout.shape
    leading = x.shape[:-1]
    x2d = x.reshape(-1, k).contiguous()
    y = _apply_forward(x2d, values.contiguous(), layout, bias, grad_block_mask, [], name)
    return y.view(*leading, m)


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing ``torch._dynamo`` at import
    time: that import (with triton behind it) adds ~140 MB to every process that merely
    imports this package. Dynamo reads this marker when it traces a call;
    tests/test_compile.py checks that torch's decorator sets the same one."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _select_backend(
    requested: str | None,
    device: torch.device,
    dtype: torch.dtype,
    block_size: tuple[int, int],
    op: str = "block_sparse_linear",
) -> str:
    # A compiled graph bakes the choice in (it loads modules and reads the environment, which
    # dynamo must not trace); eager calls resolve every time, so $SPARCL_BACKEND is honoured.
    name = backend_for_block_size(resolve_backend(requested, device), block_size)
    dtypes = get_backend(name).SUPPORTED_DTYPES
    if dtype not in dtypes:
        raise TypeError(f"{op}: backend {name!r} supports dtypes {dtypes}, x has {dtype}")
    return name


@_assume_constant_result
def _cpu_bf16_kernels_take(requested: str | None, block_size: tuple[int, int]) -> bool:
    name = backend_for_block_size(resolve_backend(requested, torch.device("cpu")), block_size)
    return name == "cpu" and get_backend(name).takes_bf16_autocast(block_size)


def _runs_cpu_bf16_kernels(x: object, requested: str | None, block_size: tuple[int, int]) -> bool:
    """Whether a call runs the CPU backend's bf16 kernels: under CPU bf16 autocast, on
    the ``cpu`` backend, where it has kernels for the instruction (or the emulation was
    selected) and the blocks fit them."""
    return (
        isinstance(x, Tensor)
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)  # autocast leaves fp64 alone
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and _cpu_bf16_kernels_take(requested, tuple(block_size))
    )


# ---------------------------------------------------------------- convolution


def block_sparse_conv2d(
    x: Tensor,
    values: Tensor,
    layout: BlockLayout,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    bias: Tensor | None = None,
    grad_block_mask: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """2-D convolution (groups=1, zero padding) with a block-sparse weight, as an implicit GEMM.

    The layout describes the GEMM-view weight ``[C_out, kh * kw * C_in]`` with columns ordered
    (tap, input channel): a block is ``bm`` output channels x ``bk`` input channels at one
    kernel tap, and ``bk`` must divide ``C_in``. No patch matrix is materialised on the ``cpu``
    backend. The kernels compute in channels-last: ``x`` is ``[N, C_in, H, W]`` in any memory
    format (channels-last avoids a copy) and the result ``[N, C_out, OH, OW]`` always has
    channels-last strides (copying it back to NCHW measured slower end to end than letting the
    following layers run on channels-last tensors; bench/RESULTS.md, issue 15). Gradients and
    autocast (the CPU's bf16 kernels included) as in :func:`block_sparse_linear`.
    """
    op = "block_sparse_conv2d"
    bf16_kernels = isinstance(layout, BlockLayout) and _runs_cpu_bf16_kernels(
        x, backend, layout.block_size
    )
    x, values, bias = _autocast_operands(x, values, bias, bf16_kernels)
    _check_arguments(x, values, layout, bias, grad_block_mask, op=op, mixed_bf16=bf16_kernels)
    if x.dim() != 4:
        _fail(ValueError, op, f"x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    try:
        geometry = ConvGeometry.of(
            tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation)
        )
    except ValueError as error:
        _fail(ValueError, op, str(error))
    taps = geometry.taps
    channels = x.shape[1]
    if layout.shape[1] != taps * channels or channels % layout.block_size[1]:
        _fail(
            ValueError,
            op,
            f"layout shape {layout.shape} with block size {layout.block_size} does not fit "
            f"{channels} input channels x {taps} taps (needs K = taps * C_in, bk | C_in)",
        )
    out_h, out_w = geometry.output_size((x.shape[2], x.shape[3]))
    if out_h < 1 or out_w < 1:
        _fail(ValueError, op, f"input {tuple(x.shape)} is too small for this convolution")
    name = _select_backend(backend, x.device, values.dtype, layout.block_size, op)
    y = _apply_forward(
        x.permute(0, 2, 3, 1).contiguous(),
        values.contiguous(),
        layout,
        bias,
        grad_block_mask,
        list(geometry),
        name,
    )
    return y.permute(0, 3, 1, 2)


def _autocast_operands(
    x: Tensor, values: Tensor, bias: Tensor | None, bf16_kernels: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The operands as an autocast region on ``x``'s device computes with.

    CUDA: the region's dtype (fp16/bf16), which the GPU kernels run in. CPU with the bf16
    kernels (``bf16_kernels``): ``x`` in bf16, ``values`` and ``bias`` in fp32 (the kernels
    round the packed values to bf16 themselves and return the fp32 gradient of the master
    values); the result is bf16, as ``nn.Linear``'s under the same region. CPU otherwise:
    fp32, the CPU kernels' precision (autocast runs such ops in fp32, as it does for its fp32
    op list); the fp32 result then flows on into the region's low-precision ops. Casts are
    differentiable, so gradients reach fp32 ``values`` as master weights. Outside autocast:
    unchanged.
    """
    if not isinstance(x, Tensor) or not torch.is_autocast_enabled(x.device.type):
        return x, values, bias
    dtype = torch.get_autocast_dtype(x.device.type) if x.device.type != "cpu" else torch.float32

    def cast(t, to=dtype):
        return t.to(to) if isinstance(t, Tensor) and t.is_floating_point() else t

    if bf16_kernels:
        return cast(x, torch.bfloat16), cast(values, torch.float32), cast(bias, torch.float32)
    return cast(x), cast(values), cast(bias)


def _fail(exc: type[Exception], op: str, message: str) -> NoReturn:
    raise exc(f"{op}: {message}")


def _check_arguments(
    x: object,
    values: object,
    layout: object,
    bias: object,
    grad_block_mask: object,
    op: str = "block_sparse_linear",
    x_features_dim: int = -1,
    mixed_bf16: bool = False,
) -> None:
    """Raise naming the bad argument. ``mixed_bf16``: bf16 ``x`` with fp32 ``values`` and
    ``bias`` (the CPU bf16 kernels under autocast)."""
    if not isinstance(layout, BlockLayout):
        _fail(TypeError, op, f"layout must be a BlockLayout, got {type(layout).__name__}")
    for name, t in (("x", x), ("values", values)):
        if not isinstance(t, Tensor):
            _fail(TypeError, op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            _fail(TypeError, op, f"{name} must be a floating-point tensor, got {t.dtype}")
    m, k = layout.shape
    if op == "block_sparse_linear" and (x.dim() < 1 or x.shape[-1] != k):
        _fail(
            ValueError,
            op,
            f"x must have last dimension K = {k} (the layout's in-features), "
            f"got shape {tuple(x.shape)}",
        )
    if tuple(values.shape) != layout.values_shape:
        _fail(
            ValueError,
            op,
            f"values must have shape (nnz, bm, bk) = {layout.values_shape} to match the layout, "
            f"got {tuple(values.shape)}",
        )
    if values.dtype != x.dtype and not mixed_bf16:
        _fail(TypeError, op, f"values dtype {values.dtype} must equal x dtype {x.dtype}")
    if values.device != x.device:
        _fail(ValueError, op, f"values is on {values.device} but x is on {x.device}")
    if layout.device != x.device:
        _fail(
            ValueError,
            op,
            f"layout is on {layout.device} but x is on {x.device}; "
            f"use layout.to({str(x.device)!r})",
        )
    if bias is not None:
        if not isinstance(bias, Tensor):
            _fail(TypeError, op, f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (m,):
            _fail(ValueError, op, f"bias must have shape ({m},), got {tuple(bias.shape)}")
        if bias.dtype != values.dtype:
            _fail(TypeError, op, f"bias dtype {bias.dtype} must equal x dtype {x.dtype}")
        if bias.device != x.device:
            _fail(ValueError, op, f"bias is on {bias.device} but x is on {x.device}")
    if grad_block_mask is not None:
        check_grad_block_mask(grad_block_mask, layout.nnz, op)
        if grad_block_mask.device != x.device:
            _fail(
                ValueError,
                op,
                f"grad_block_mask is on {grad_block_mask.device} but x is on {x.device}",
            )


def check_grad_block_mask(grad_block_mask: object, nnz: int, op: str) -> None:
    """``TypeError``/``ValueError`` (prefixed by ``op``) unless a bool tensor of shape (nnz,)."""
    if not isinstance(grad_block_mask, Tensor):
        _fail(
            TypeError,
            op,
            f"grad_block_mask must be a bool tensor or None, got {type(grad_block_mask).__name__}",
        )
    if grad_block_mask.dtype != torch.bool:
        _fail(
            TypeError,
            op,
            f"grad_block_mask must have dtype torch.bool, got {grad_block_mask.dtype}",
        )
    if tuple(grad_block_mask.shape) != (nnz,):
        _fail(
            ValueError,
            op,
            f"grad_block_mask must have shape (nnz,) = ({nnz},), "
            f"got {tuple(grad_block_mask.shape)}",
        )
