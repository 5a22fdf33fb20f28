"""Triton kernels for the fused 3D-flow ops (installed as ``fgp_fast.kernels``).

Empty until the Triton backend lands; ``fgp_fast.ops`` reports it as unavailable meanwhile.
"""
