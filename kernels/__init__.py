"""Triton kernels of the fused 3D-flow encoder (installed as ``fgp_fast.kernels``).

Only ``@triton.jit`` code and pure helpers live here (``encode.py``), the way ``csrc/`` keeps the
C++/CUDA; nothing here imports ``fgp_fast``. The glue that binds them to torch and registers the
``"triton"`` backend is ``fgp_fast.ops.triton``. ``encode.py`` is imported only when the kernels
are first needed, because ``triton.jit`` decides at decoration time whether a kernel is compiled
or interpreted.
"""
