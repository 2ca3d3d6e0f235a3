"""Backbones for the continual-learning layer."""

from sparcl.models.resnet import BasicBlock, ResNet, resnet18

__all__ = ["BasicBlock", "ResNet", "resnet18"]
