"""The PyTorch side of data-parallel evaluation: the World of a process started by torchrun."""
import os

import numpy as np

from ppt_common.distributed import SINGLE, World


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def torch_world(device: str = "cpu") -> World:
    """Rank and size from torchrun's environment (one process otherwise), with an AllGather over float32 vectors
    (gloo on CPU, NCCL for CUDA devices)."""
    if not launched_by_torchrun():
        return SINGLE
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")

    def all_gather(words):
        local = torch.from_numpy(np.asarray(words, dtype=np.float32)).to(device)
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local)
        return torch.cat(parts).cpu().numpy()
    return World(dist.get_rank(), dist.get_world_size(), all_gather)
