"""Training FLOPs accounting (SPARCL.md): what a step costs dense vs with SparCL's sparsity.

Per sample, a layer's forward costs ``2 * MACs`` (times its density when block-sparse); the
input-gradient pass costs the same as the forward; the weight-gradient pass costs the dense
part plus ``g`` times the sparse part, ``g`` the gradient density (DGM). BatchNorm, pooling
and the loss are ignored (they are a few percent of a ResNet's FLOPs), as in the paper.
Element-masked dense layers (``--granularity unstructured``) are counted at their mask's
density too, as the paper counts them, although the masked-dense computation executes all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparcl.masking import unit_density
from sparcl_kernels.nn import SparseConv2d, SparseLinear


@dataclass(frozen=True)
class LayerFlops:
    dense_part: float  # forward FLOPs per sample of the layers that stay dense
    sparse_part: float  # forward FLOPs per sample of the sparse layers, as if they were dense
    sparse_density: float  # stored fraction of the sparse part (FLOP-weighted)

    def step(self, samples: int, gradient_density: float = 1.0) -> dict[str, float]:
        """FLOPs of a training step over ``samples`` examples: dense-equivalent and actual."""
        forward = self.dense_part + self.sparse_density * self.sparse_part
        weight_grad = self.dense_part + gradient_density * self.sparse_density * self.sparse_part
        dense_equivalent = 3 * (self.dense_part + self.sparse_part) * samples
        actual = (2 * forward + weight_grad) * samples
        return {"dense_equivalent": dense_equivalent, "actual": actual}


def _macs(module: nn.Module, output: torch.Tensor) -> float:
    """Multiply-accumulates of one sample through a Linear/Conv2d layer (dense weight)."""
    if isinstance(module, nn.Conv2d | SparseConv2d):
        kh, kw = module.kernel_size
        pixels = output.shape[2] * output.shape[3]
        return float(pixels * module.out_channels * module.in_channels * kh * kw)
    in_features = module.in_features
    return float(output[0].numel() * in_features)


@torch.no_grad()
def count_flops(model: nn.Module, sample_shape: tuple[int, ...]) -> LayerFlops:
    """Per-sample forward FLOPs of ``model``'s Linear/Conv2d layers, dense and sparse parts."""
    dense, sparse, stored = 0.0, 0.0, 0.0
    records: list[tuple[nn.Module, torch.Tensor]] = []
    kinds = (nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d)
    hooks = [
        m.register_forward_hook(lambda m, i, o: records.append((m, o)))
        for m in model.modules()
        if isinstance(m, kinds)
    ]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *sample_shape))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for module, output in records:
        flops = 2 * _macs(module, output)
        density = unit_density(module)
        if density is not None:
            sparse += flops
            stored += flops * density
        else:
            dense += flops
    return LayerFlops(dense, sparse, stored / sparse if sparse else 1.0)
