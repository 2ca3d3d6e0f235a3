"""sparcl_kernels: block-sparse training for PyTorch that computes only the stored weight blocks.

Public API::

    layout = BlockLayout.from_dense(weight, block_size=(32, 32), sparsity=0.9)
    values = layout.to_blocks(weight)
    y = block_sparse_linear(x, values, layout, bias=None, grad_block_mask=None, backend=None)
    y = block_sparse_conv2d(x, values, layout, kernel_size=(3, 3), padding=(1, 1))
    backend_info()

    model = sparsify(model, sparsity=0.9, block_size=(32, 32))   # swap Linear/Conv2d layers
"""

from sparcl_kernels import nn
from sparcl_kernels.backends import BackendUnavailableError, backend_info
from sparcl_kernels.layout import BlockLayout
from sparcl_kernels.nn import sparsify
from sparcl_kernels.ops import block_sparse_conv2d, block_sparse_linear

__all__ = [
    "BackendUnavailableError",
    "BlockLayout",
    "backend_info",
    "block_sparse_conv2d",
    "block_sparse_linear",
    "nn",
    "sparsify",
]
__version__ = "0.1.0"
