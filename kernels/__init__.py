"""Fused kernels of tte_fast (installed as ``tte_fast.kernels``)."""
