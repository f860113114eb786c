"""Proportional attention's bias, log(size), from one exact table shared by both frameworks.

A token's size is the number of patches (plus prefix tokens) it holds: always a whole number from 1 to the
model's initial token count. So `log(size)` is read from a table of exactly rounded logarithms instead of being
computed by the framework's Log kernel: MindSpore 2.10's CPU float32 `Log` is neither correctly rounded (up to
4 ulp off on 1..197) nor deterministic (about 1 call in 10 differs on a [12, 147, 1] tensor), which made a pooled
model's float32 output change from call to call. Both frameworks read this table (cast to the model's dtype), so
the bias is bit-identical across frameworks, calls, modes, batch shapes and process counts.

The table itself is computed by the C library's scalar `logl` in extended precision, then rounded to float64:
numpy's float64 `log` takes a SIMD loop on CPUs with AVX-512, which is one ulp off on 235 of 1..1024 (numpy 1.26,
AMD EPYC with AVX-512; 0 on CPUs without it), so a float64 table would differ from machine to machine.
"""
import numpy as np


def log_size_table(num_tokens: int) -> np.ndarray:
    """float64 [num_tokens + 1]: entry s is log(s), correctly rounded to float64 (entry 0, never read, is -inf).
    A cast to float32 or float16 then rounds once, to the nearest value of that type."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    with np.errstate(divide="ignore"):
        return np.log(np.arange(num_tokens + 1, dtype=np.longdouble)).astype(np.float64)
