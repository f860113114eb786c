"""Mixup and CutMix under data parallelism: each rank mixes its images with the global batch's mirror images,
loaded from the mirror rank's batch, so N ranks give the images and targets one process gives (#30 case 4)."""
import numpy as np
import pytest

from ms_ppt.data import mix_with_mirror
from ppt_common.distributed import World
from ppt_common.training import rank_steps


def mindcv_mixup(seed, mixup_alpha=0.8, cutmix_alpha=1.0):
    from mindcv.data.mixup import Mixup
    np.random.seed(seed)
    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=1.0, switch_prob=0.5, mode="batch",
                 label_smoothing=0.0, num_classes=10)


@pytest.mark.parametrize("seed", range(6))  # both switches (mixup, cutmix) occur among these draws
def test_one_process_is_mindcvs_own_mixup_bit_for_bit(seed):
    rng = np.random.RandomState(seed)
    images, labels = rng.randn(8, 3, 16, 16).astype(np.float32), rng.randint(0, 10, 8)
    want = mindcv_mixup(seed)(images.copy(), labels)
    mixup = mindcv_mixup(seed)
    got = mix_with_mirror(mixup, images, labels, images, labels, 10)
    for w, g in zip(want, got):
        assert g.dtype == np.float32 and g.tobytes() == w.tobytes()


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_ranks_mixing_with_their_mirror_rank_give_the_one_process_batch(size, seed):
    """The global batch of 12 at one step, as rank_steps deals it (rank r: positions r, r+N, ...); every rank draws
    the same step parameters (the trainer seeds numpy per step)."""
    rng = np.random.RandomState(seed)
    items_images, items_labels = rng.randn(12, 3, 16, 16).astype(np.float32), rng.randint(0, 10, 12)
    (one_indices, _), = rank_steps(12, 0, seed, 1, 12, World())[:1]
    want = mix_with_mirror(mindcv_mixup(seed), items_images[one_indices], items_labels[one_indices],
                           items_images[one_indices], items_labels[one_indices], 10)
    got_images, got_targets = np.zeros_like(want[0]), np.zeros_like(want[1])
    for rank in range(size):
        (indices, positions), = rank_steps(12, 0, seed, 1, 12 // size, World(rank, size))[:1]
        (mirror_indices, _), = rank_steps(12, 0, seed, 1, 12 // size, World(size - 1 - rank, size))[:1]
        images, targets = mix_with_mirror(mindcv_mixup(seed), items_images[indices], items_labels[indices],
                                          items_images[mirror_indices], items_labels[mirror_indices], 10)
        got_images[positions], got_targets[positions] = images, targets
    assert got_images.tobytes() == want[0].tobytes() and got_targets.tobytes() == want[1].tobytes()
