"""Triton kernels of pathrt (installed as `pathrt.kernels`).

`pathrt.kernels.ops` holds the Triton versions of the fused deployed-path ops
(daq_threshold_pack, masked_bias_relu(_), pathway_conv2d), registered with
`torch.library.triton_op` as `pathrt::triton_*` so torch.compile can see into them. They run on
CUDA tensors, and on CPU tensors only under `TRITON_INTERPRET=1` (set before importing triton),
which is how the tests check them against the plain-PyTorch references. This package imports
nothing at import time, so `import pathrt.kernels` never needs triton.
"""
