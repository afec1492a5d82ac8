"""The kernels layer: leaves above the op specs (`pathrt.opspec`), never importing the runtime.

- `native`: loads the compiled extension pathrt._C (C++/OpenMP and CUDA kernels of every op,
  the C++ ExplainSession) and registers the plain-PyTorch reference for every op and dispatch
  key it lacks, so `torch.ops.pathrt.*` always works.
- `triton_fused`: Triton versions of the fused deployed-path ops (daq_threshold_pack,
  masked_bias_relu(_), pathway_conv2d) as `pathrt::triton_*` ops (`torch.library.triton_op`,
  so torch.compile can see into them); `triton_generator`: the fused generator ops (rfe_tail,
  pdn_encoder_layer, rpd_decode). The triton backend runs both. They run on CUDA tensors, and on
  CPU tensors only under `TRITON_INTERPRET=1` (set before importing triton), which is how the tests
  check them against the references.
This package imports nothing at import time, so `import pathrt.kernels` never needs triton.
"""
