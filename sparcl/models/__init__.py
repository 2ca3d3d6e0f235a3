"""Backbones for the continual-learning layer."""

from sparcl.models.mlp import MLP
from sparcl.models.resnet import BLOCK_CONV_PATTERNS, BasicBlock, ResNet, resnet18

__all__ = ["BLOCK_CONV_PATTERNS", "MLP", "BasicBlock", "ResNet", "resnet18"]
