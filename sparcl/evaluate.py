"""Evaluation on every seen task: Class-IL and Task-IL accuracy."""

from __future__ import annotations

import torch
from torch import nn

from sparcl.data.augment import normalize
from sparcl.data.protocol import SplitData


@torch.no_grad()
def evaluate(
    net: nn.Module, data: SplitData, seen_tasks: int, batch_size: int = 256, limit: int = 0
) -> tuple[list[float], list[float]]:
    """Accuracy (%) on the test split of tasks ``0 .. seen_tasks-1``: (class_il, task_il).

    Class-IL takes the argmax over all classes; Task-IL only over the task's own classes.
    ``limit`` > 0 evaluates at most that many examples per task (debug runs).
    """
    was_training = net.training
    net.eval()
    class_il, task_il = [], []
    for task in range(seen_tasks):
        index = data.task_indices(task, "test")
        if limit:
            index = index[:limit]
        classes = data.protocol.task_classes(task)
        correct_class = correct_task = 0
        for start in range(0, len(index), batch_size):
            batch = index[start : start + batch_size]
            logits = net(normalize(data.test_images[batch], data.protocol))
            labels = data.test_labels[batch]
            correct_class += (logits.argmax(1) == labels).sum().item()
            own = logits[:, classes.start : classes.stop].argmax(1) + classes.start
            correct_task += (own == labels).sum().item()
        total = max(len(index), 1)
        class_il.append(100.0 * correct_class / total)
        task_il.append(100.0 * correct_task / total)
    net.train(was_training)
    return class_il, task_il
