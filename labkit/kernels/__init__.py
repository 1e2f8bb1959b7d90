"""Triton attention kernels: `flash_attention` (training, GQA and MLA) and `mla_decode`."""

from labkit.kernels.attention import flash_attention, mla_decode

__all__ = ["flash_attention", "mla_decode"]
