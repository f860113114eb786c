"""Proportional attention's log(size) table: exactly rounded in every dtype, and what both frameworks add."""
import numpy as np
import pytest

from ppt_common.proportional import log_size_table


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_every_entry_is_the_correctly_rounded_logarithm(dtype):
    """Against logl in extended precision (64-bit significand), rounded once to the dtype: sizes up to a 384
    model's 577 tokens and beyond."""
    table = log_size_table(1024)
    assert table.dtype == np.float64 and table.shape == (1025,) and table[0] == -np.inf
    exact = np.log(np.arange(1, 1025, dtype=np.longdouble))
    np.testing.assert_array_equal(table[1:].astype(dtype), exact.astype(dtype))


def test_a_model_without_tokens_is_refused():
    with pytest.raises(ValueError, match="num_tokens must be positive"):
        log_size_table(0)
