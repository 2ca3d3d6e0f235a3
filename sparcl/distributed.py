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
  identically on every rank; :meth:`Cluster.check_consistent` verifies the masks each task;
- BatchNorm statistics are per rank during a task and averaged before each evaluation;
- evaluation is sharded and its counts all-reduced; rank 0 alone writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from sparcl.masking import masked_units


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
        """Make every rank start from rank 0's parameters and buffers."""
        if self.enabled:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)

    @torch.no_grad()
    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over ranks."""
        if not self.enabled:
            return
        for buffer in module.buffers():
            if buffer.is_floating_point():  # masks are bool, counters integer
                dist.all_reduce(buffer)
                buffer /= self.world_size

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

    def check_consistent(self, net: nn.Module) -> None:
        """Raise ``RuntimeError`` if ranks disagree on any weight or gradient mask."""
        if not self.enabled:
            return
        signature = torch.tensor([_mask_signature(unit) for unit in masked_units(net)])
        if signature.numel() == 0:
            return
        signatures = [torch.empty_like(signature) for _ in range(self.world_size)]
        dist.all_gather(signatures, signature)
        for other, theirs in enumerate(signatures):
            if not torch.equal(theirs, signature):
                layer = int((theirs != signature).nonzero()[0])
                raise RuntimeError(
                    f"rank {self.rank} and rank {other} disagree on the masks of maskable "
                    f"layer {layer}; TDM/DGM decisions must be identical on every rank"
                )

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _mask_signature(unit) -> float:
    """A position-sensitive checksum of a layer's weight mask and gradient mask."""
    stored = unit.stored_mask().flatten().double()
    weights = torch.arange(1, stored.numel() + 1, dtype=torch.float64)
    value = float((stored * weights).sum())
    grad_mask = unit.grad_mask
    if grad_mask is not None:
        grad_mask = grad_mask.cpu().double()
        positions = torch.arange(1, grad_mask.numel() + 1)
        value += 0.5 * float((grad_mask * positions).sum()) + grad_mask.numel()
    return value
