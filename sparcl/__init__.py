"""sparcl: SparCL continual learning on top of sparcl_kernels."""
