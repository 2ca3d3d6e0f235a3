"""A small MLP backbone (flattened input, two hidden layers), initialised as mammoth's.

mammoth's MNIST MLP: two hidden layers of ``--mlp_hidden_size`` units (its default 100; ours
256, which the block sizes 16 and 32 divide), Xavier-uniform weights and zero biases.
"""

from __future__ import annotations

from torch import Tensor, nn

DEFAULT_HIDDEN = 256


class MLP(nn.Module):
    def __init__(self, input_size: int, num_classes: int, hidden: int = DEFAULT_HIDDEN) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(input_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))
