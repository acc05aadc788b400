"""sparsejit: compile pruned CNNs into native code whose kernels carry each layer's sparsity.

    cm = sparsejit.compile("pruned.onnx", target="host")
    y = cm(x)
"""

__version__ = "0.1.0"
