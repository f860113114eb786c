"""Data-parallel evaluation, framework-free: shards, and gathering every rank's results in dataset order.

Each rank evaluates one contiguous run of whole batches of the one-process batching: every image is computed in
a batch of the same images, in the same order and of the same shape, whatever the number of ranks, so N
processes give the one-process logits bit for bit wherever the model itself is deterministic (a kernel may round
a row differently with the number of rows in its batch, as PyTorch's CPU matmul does, so splitting a batch is not
neutral). No padding is added, so every image is counted exactly once. The results are gathered to every rank
with the framework's AllGather on float32 words, which copies bits (bytes of any dtype travel exactly, -0.0 and
NaN payloads included). MindSpore's CPU collectives take float32 only, so everything is sent as pickled bytes
viewed as float32.
"""
from __future__ import annotations

import dataclasses
import pickle
from typing import Any, Callable, List, Optional, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in a data-parallel job: rank, size, and an AllGather of float32 vectors (equal length
    on every rank; the result concatenates them in rank order)."""
    rank: int = 0
    size: int = 1
    all_gather: Optional[Callable[[np.ndarray], np.ndarray]] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def shard(items: Sequence[T], world: World, batch_size: int = 1) -> List[T]:
    """The rank's contiguous run of whole batches (`items` cut into batches of `batch_size`, the last one possibly
    short): shards differ by at most one batch and, in rank order, are the list again. A rank may get nothing when
    there are fewer batches than ranks."""
    n = len(items)
    batches = -(-n // batch_size)
    first, last = batches * world.rank // world.size, batches * (world.rank + 1) // world.size
    return list(items[first * batch_size:min(n, last * batch_size)])


def _gather_words(world: World, words: np.ndarray) -> np.ndarray:
    return np.asarray(world.all_gather(np.ascontiguousarray(words, dtype=np.float32))).reshape(world.size, -1)


def gather_objects(world: World, obj: Any) -> List[Any]:
    """Every rank's `obj`, in rank order, on every rank (picklable objects)."""
    if world.size == 1:
        return [obj]
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    lengths = _gather_words(world, np.array([len(payload)], dtype=np.int64).view(np.float32))
    lengths = lengths.copy().view(np.int64)[:, 0]
    words = -(-int(lengths.max()) // 4)
    buffer = np.zeros(words * 4, dtype=np.uint8)
    buffer[:len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    gathered = _gather_words(world, buffer.view(np.float32))
    return [pickle.loads(gathered[r].tobytes()[:lengths[r]]) for r in range(world.size)]
