"""Data-parallel training under ``torchrun``: which rank computes what, and what they share.

Semantics (chosen so that N ranks with a global batch B train like one process with B):
- every rank sees the whole global batch (same seed, same data order, same augmentation) and
  runs the network on its contiguous shard of it (:meth:`Cluster.local`);
- loss terms are weighted by shard size, and gradients are summed over ranks in one flat
  all-reduce: the result is the gradient of the global mean loss. Block-sparse layers
  contribute their compressed ``values`` only, so the bytes sent shrink with density;
- the rehearsal buffer is global and replicated: each rank adds the all-gathered batch with
  the same generator, so all buffers stay identical and replay batches agree;
- TDM, DGM and DDR decide from all-reduced gradients and all-gathered logits, hence
  identically on every rank; :meth:`Cluster.check_consistent` compares the masks exactly
  (a hash of their bits) after every TDM update and DGM refresh and at the end of each task;
- BatchNorm normalises with the statistics of the global batch (:class:`RankSyncedBatchNorm`:
  per-channel sums all-reduced, differentiably), so its outputs, gradients and running
  statistics are those of one process with the whole batch (torch's SyncBatchNorm is
  CUDA-only);
- evaluation is sharded and its counts all-reduced; rank 0 alone writes files.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

import sparcl_kernels as sk
from sparcl.masking import masked_units


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients (each
    rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class RankSyncedBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the batch over all ranks.

    A drop-in for ``nn.BatchNorm1d/2d/3d`` (same parameters, buffers and state_dict keys):
    in training under an initialised process group it all-reduces the per-channel sum and
    count, then the centred sum of squares (two passes, as exact as one process's), through
    a differentiable all-reduce so that gradients flow across ranks; otherwise it is the plain
    BatchNorm. Made by :meth:`Cluster.sync_batch_norm`.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), local_count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(count))
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / max(count - 1.0, 1.0))
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


@dataclass
class Cluster:
    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    allreduce_bytes: list[int] = field(default_factory=list)  # per gradient sync

    @classmethod
    def from_environment(cls) -> Cluster:
        """Join the process group ``torchrun`` describes (gloo on CPU, nccl on GPU), if any."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        return cls(dist.get_rank(), dist.get_world_size(), backend)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ sharding

    def local(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous shard of ``tensor``'s first dimension."""
        if not self.enabled:
            return tensor
        return torch.tensor_split(tensor, self.world_size)[self.rank]

    def shard_weight(self, total: int) -> float:
        """Factor turning a shard's mean loss into its share of the global mean (times N)."""
        if not self.enabled:
            return 1.0
        share = len(torch.tensor_split(torch.empty(total), self.world_size)[self.rank])
        return share * self.world_size / total

    def gather(self, shard: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's shard (as produced by :meth:`local`) in rank order."""
        if not self.enabled:
            return shard
        sizes = torch.tensor([shard.shape[0]])
        all_sizes = [torch.zeros_like(sizes) for _ in range(self.world_size)]
        dist.all_gather(all_sizes, sizes)
        longest = int(max(all_sizes))
        padded = shard.new_zeros((longest, *shard.shape[1:]))
        padded[: shard.shape[0]] = shard
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(pieces, padded.contiguous())
        return torch.cat([p[: int(n)] for p, n in zip(pieces, all_sizes, strict=True)])

    # ------------------------------------------------------------------ synchronisation

    @torch.no_grad()
    def sum_gradients(self, parameters) -> None:
        """Sum the (shard-weighted) gradients of all ranks in one flat all-reduce."""
        if not self.enabled:
            return
        params = [p for p in parameters if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]) / self.world_size
        dist.all_reduce(flat)
        self.allreduce_bytes.append(flat.numel() * flat.element_size())
        offset = 0
        for param, grad in zip(params, grads, strict=True):
            count = grad.numel()
            param.grad = flat[offset : offset + count].view_as(param).clone()
            offset += count

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module) -> None:
        """Make every rank start from rank 0's parameters and buffers, layouts included (the
        block-sparse layers' index buffers are derived from the broadcast ``block_mask``)."""
        if not self.enabled:
            return
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)
        for layer in module.modules():
            if isinstance(layer, sk.nn.BlockSparseWeight):
                layer.rederive_layout()

    @staticmethod
    def sync_batch_norm(module: nn.Module) -> nn.Module:
        """Replace every BatchNorm of ``module`` by a :class:`RankSyncedBatchNorm` holding the
        same parameters and buffers (in place; returns ``module``)."""
        for name, child in list(module.named_children()):
            if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
                synced = RankSyncedBatchNorm(
                    child.num_features, child.eps, child.momentum, child.affine,
                    child.track_running_stats,
                )  # fmt: skip
                synced.load_state_dict(child.state_dict())
                synced.train(child.training)
                setattr(module, name, synced.to(next(child.buffers(), torch.empty(0)).device))
            else:
                Cluster.sync_batch_norm(child)
        return module

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def broadcast_object(self, value):
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def check_consistent(self, net: nn.Module, when: str = "") -> None:
        """Raise ``RuntimeError`` if ranks disagree on any weight or gradient mask (compared
        exactly, by a hash of each layer's mask bits); ``when`` says at which point."""
        if not self.enabled:
            return
        units = masked_units(net)
        if not units:
            return
        digests = torch.tensor([list(_mask_digest(unit)) for unit in units], dtype=torch.uint8)
        everyone = [torch.empty_like(digests) for _ in range(self.world_size)]
        dist.all_gather(everyone, digests)
        for other, theirs in enumerate(everyone):
            if not torch.equal(theirs, digests):
                layer = int((theirs != digests).any(1).nonzero()[0])
                raise RuntimeError(
                    f"rank {self.rank} and rank {other} disagree on the masks of maskable "
                    f"layer {layer}{' ' + when if when else ''}; TDM/DGM decisions must be "
                    "identical on every rank"
                )

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _mask_digest(unit) -> bytes:
    """SHA-256 of a layer's weight mask and gradient mask (shapes and bits): equal masks, and
    only equal masks (up to hash collisions), give equal digests."""
    digest = hashlib.sha256()
    for mask in (unit.stored_mask(), unit.grad_mask):
        if mask is None:
            digest.update(b"none")
            continue
        bits = mask.detach().to("cpu", torch.bool).contiguous()
        digest.update(repr(tuple(bits.shape)).encode())
        digest.update(bits.numpy().tobytes())
    return digest.digest()
