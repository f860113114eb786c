"""The MindSpore side of data-parallel evaluation: the World of a process started by msrun."""
import os

import numpy as np

from ppt_common.distributed import SINGLE, World


def launched_by_msrun() -> bool:
    return int(os.environ.get("MS_WORKER_NUM", os.environ.get("RANK_SIZE", "1"))) > 1


def mindspore_world() -> World:
    """Rank and size from msrun's environment (one process otherwise), with an AllGather over float32 vectors
    (MindSpore's CPU collectives take float32/float16 only)."""
    if not launched_by_msrun():
        return SINGLE
    import mindspore as ms
    from mindspore import ops
    from mindspore.communication import get_group_size, get_rank, init
    init()
    gather = ops.AllGather()
    return World(get_rank(), get_group_size(),
                 lambda words: gather(ms.Tensor(np.asarray(words, dtype=np.float32))).asnumpy().reshape(-1))
