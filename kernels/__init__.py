"""Triton kernels of pathrt (installed as `pathrt.kernels`).

Each kernel is wrapped as a torch custom op of the `pathrt` namespace and tested against its
plain-PyTorch reference under `TRITON_INTERPRET=1`. The first kernels arrive with the fast-path
issue (daq_threshold_pack, masked_bias_relu); this package holds none yet.
"""
