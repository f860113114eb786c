"""Side-by-side measurement for the benchmark tools: interleaved timing and a process's peak memory."""
import time
from typing import Callable, Dict, Hashable

import numpy as np

# Pause before each timed call: PyTorch's OpenMP workers keep spinning for a few ms after a call and slow
# whatever runs next (measured: a 4 ms MindSpore call took 11 ms right after a PyTorch call, 3.6 ms after 20 ms).
SETTLE_S = 0.05


def time_interleaved(runners: Dict[Hashable, Callable[[], None]], runs: int, warmup: int) -> Dict[Hashable, float]:
    """Median seconds per runner; every round runs each runner once, so drift on a busy machine hits all of them
    alike instead of biasing their ratios."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {key: [] for key in runners}
    for _ in range(runs):
        for key, run in runners.items():
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(v)) for key, v in times.items()}


def own_peak_rss_mb() -> float:
    """This process's peak resident set size since its exec (Linux VmHWM), in MB. wait4's ru_maxrss would also
    count the pages of the parent a child was forked from."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def random_training_batch(arch, batch: int):
    """The benchmarks' and profilers' training batch: fixed random images and one-hot targets, float32."""
    rng = np.random.RandomState(0)
    return (rng.randn(batch, 3, arch.img_size, arch.img_size).astype(np.float32),
            np.eye(arch.num_classes, dtype=np.float32)[rng.randint(0, arch.num_classes, batch)])
