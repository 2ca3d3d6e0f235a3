"""Evaluation on every seen task: Class-IL and Task-IL accuracy."""

from __future__ import annotations

import torch
from torch import nn

from sparcl.data.augment import normalize
from sparcl.data.protocol import SplitData
from sparcl.distributed import Cluster
from sparcl.precision import logits as logits_in


@torch.no_grad()
def evaluate(
    net: nn.Module,
    data: SplitData,
    seen_tasks: int,
    batch_size: int = 256,
    limit: int = 0,
    cluster: Cluster | None = None,
    precision: str = "fp32",
) -> tuple[list[float], list[float]]:
    """Accuracy (%) on the test split of tasks ``0 .. seen_tasks-1``: (class_il, task_il).

    Class-IL takes the argmax over the classes seen so far (mammoth's; after the last task,
    all of them); Task-IL only over the task's own classes.
    ``limit`` > 0 evaluates at most that many examples per task (debug runs). Under torchrun
    each rank evaluates its shard of every task and the counts are summed. ``precision``:
    that of the forwards (sparcl.precision).
    """
    cluster = cluster or Cluster()
    was_training = net.training
    net.eval()
    counts = torch.zeros(seen_tasks, 3, dtype=torch.float64)  # class-IL, task-IL, total
    seen_classes = seen_tasks * data.protocol.classes_per_task
    for task in range(seen_tasks):
        index = data.task_indices(task, "test")
        if limit:
            index = index[:limit]
        index = cluster.local(index)
        classes = data.protocol.task_classes(task)
        for start in range(0, len(index), batch_size):
            batch = index[start : start + batch_size]
            logits = logits_in(net, normalize(data.test_images[batch], data.protocol), precision)
            labels = data.test_labels[batch]
            own = logits[:, classes.start : classes.stop].argmax(1) + classes.start
            counts[task, 0] += (logits[:, :seen_classes].argmax(1) == labels).sum().item()
            counts[task, 1] += (own == labels).sum().item()
        counts[task, 2] += len(index)
    cluster.all_sum(counts)
    net.train(was_training)
    totals = counts[:, 2].clamp(min=1)
    class_il = (100.0 * counts[:, 0] / totals).tolist()
    task_il = (100.0 * counts[:, 1] / totals).tolist()
    return class_il, task_il
