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

from collections.abc import Callable
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


_BIAS = 3  # position of ``bias`` among the forward's inputs


def _gradients(
    ctx,
    grad_out: Tensor,
    x: Tensor,
    grad_input: Callable[[Tensor], Tensor],
    grad_weight: Callable[[Tensor], Tensor],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(grad_x, grad_values, grad_bias), each computed only if autograd asks for it."""
    grad_out = grad_out.contiguous()
    grad_x = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = grad_input(grad_out)
    if ctx.needs_input_grad[1]:
        grad_values = grad_weight(grad_out)
    if ctx.has_bias and ctx.needs_input_grad[_BIAS]:
        grad_bias = grad_out.sum(dim=tuple(range(grad_out.dim() - 1)))
    return grad_x, grad_values, grad_bias


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
    return x.new_empty(index[1].shape[0], *block_size)


def _setup_context(ctx, inputs, output) -> None:
    x, values, index, bias, grad_block_mask, geometry, backend = inputs
    ctx.save_for_backward(x, values, *index, grad_block_mask)
    ctx.has_bias = bias is not None
    ctx.geometry, ctx.backend = list(geometry), backend


def _backward(ctx, grad_out: Tensor):
    x, values, *index, grad_block_mask = ctx.saved_tensors
    geometry, backend = ctx.geometry, ctx.backend
    grad_x, grad_values, grad_bias = _gradients(
        ctx,
        grad_out,
        x,
        lambda dy: _grad_input_op(dy, values, index, geometry, list(x.shape), backend),
        lambda dy: _grad_weight_op(
            dy, x, index, grad_block_mask, list(values.shape[1:]), geometry, backend
        ),
    )
    return grad_x, grad_values, _no_grad(index), grad_bias, None, _no_grad(geometry), None


def _no_grad(value: list) -> list | None:
    """The gradient of a non-differentiable list input, in the structure torch.library expects:
    a list of tensors (the empty list counts as one) takes a list of Nones, others None."""
    return [None] * len(value) if all(isinstance(v, Tensor) for v in value) else None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- eager calls


class _EagerForward(torch.autograd.Function):
    """The forward op's autograd for plain eager calls (same passes, no custom-op dispatch).

    Old-style ``forward(ctx, ...)``: with a separate ``setup_context``, ``apply`` binds the
    arguments through ``inspect.signature`` on every call (~60 us)."""

    @staticmethod
    def forward(ctx, x, values, layout, bias, grad_block_mask, geometry, backend):
        ctx.save_for_backward(x, values, grad_block_mask)
        ctx.layout, ctx.has_bias = layout, bias is not None
        ctx.geometry, ctx.backend = geometry, backend
        return _forward_pass(x, values, layout, bias, geometry, backend)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, values, grad_block_mask = ctx.saved_tensors
        layout, geometry, backend = ctx.layout, ctx.geometry, ctx.backend
        grad_x, grad_values, grad_bias = _gradients(
            ctx,
            grad_out,
            x,
            lambda dy: _grad_input_pass(dy, values, layout, geometry, list(x.shape), backend),
            lambda dy: _grad_weight_pass(dy, x, layout, grad_block_mask, geometry, backend),
        )
        return grad_x, grad_values, None, grad_bias, None, None, None


_PLAIN_TENSOR_TYPES = (Tensor, nn.Parameter)


def _traced(*tensors: Tensor | None) -> bool:
    """Whether this call must go through the custom op: while torch.compile or torch.export
    trace, under a dispatch mode (fake tensors, make_fx, FLOP counters), and for tensor
    subclasses or functorch transforms, all of which rely on the op's registrations."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return True
    if torch._C._are_functorch_transforms_active():
        return True
    return any(t is not None and type(t) not in _PLAIN_TENSOR_TYPES for t in tensors)


def _apply_forward(
    x: Tensor,
    values: Tensor,
    layout: BlockLayout,
    bias: Tensor | None,
    grad_block_mask: Tensor | None,
    geometry: list[int],
    backend: str,
) -> Tensor:
    """The forward pass with autograd, through the custom op when traced (see ``_traced``)."""
    if _traced(x, values, bias, grad_block_mask):
        index = layout.tensors()
        return _forward_op(x, values, index, bias, grad_block_mask, geometry, backend)
    return _EagerForward.apply(x, values, layout, bias, grad_block_mask, geometry, backend)


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
    :func:`_autocast_operands`), so fp32 values act as master weights.
    """
    x, values, bias = _autocast_operands(x, values, bias)
    _check_arguments(x, values, layout, bias, grad_block_mask)
    name = _select_backend(backend, x.device, x.dtype, layout.block_size)
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
    following layers run on channels-last tensors; bench/RESULTS.md, issue 15). Gradients as
    in :func:`block_sparse_linear`.
    """
    op = "block_sparse_conv2d"
    x, values, bias = _autocast_operands(x, values, bias)
    _check_arguments(x, values, layout, bias, grad_block_mask, op=op)
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
    name = _select_backend(backend, x.device, x.dtype, layout.block_size, op)
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
    x: Tensor, values: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The operands as an autocast region on ``x``'s device computes with.

    CUDA: the region's dtype (fp16/bf16), which the GPU kernels run in. CPU: fp32, the CPU
    kernels' precision (autocast runs such ops in fp32, as it does for its fp32 op list); the
    fp32 result then flows on into the region's low-precision ops. Casts are differentiable,
    so gradients reach fp32 ``values`` as master weights. Outside autocast: unchanged.
    """
    if not isinstance(x, Tensor) or not torch.is_autocast_enabled(x.device.type):
        return x, values, bias
    dtype = torch.get_autocast_dtype(x.device.type) if x.device.type != "cpu" else torch.float32

    def cast(t):
        return t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t

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
) -> None:
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
    if values.dtype != x.dtype:
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
        if bias.dtype != x.dtype:
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
