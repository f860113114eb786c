"""ms_ppt.training.TrainStep as a compiled cell: what it does around MindSpore's compile."""
import mindspore as ms
import numpy as np
from mindspore import nn

from ms_ppt import training


class Tiny(nn.Cell):
    def __init__(self):
        super().__init__()
        self.fc = nn.Dense(4, 3)

    def construct(self, images, draws):
        return self.fc(images)


def test_the_compilers_freed_heap_is_released_once_per_compile(monkeypatch):
    """TrainStep compiles once per new input shape and, after each compile (only then), hands the heap the compiler
    freed back to the operating system (ppt_common.heap; ~100 MB of a DeiT step's peak)."""
    released = []
    monkeypatch.setattr(training, "release_free_heap", lambda: released.append(1) or True)
    ms.set_context(mode=ms.GRAPH_MODE)
    model = Tiny()
    optimizer = training.AdamW(model.trainable_params())
    step = training.TrainStep(training.LossCell(model, training.build_loss(0.1)), optimizer)
    rng = np.random.RandomState(0)

    def run(batch):
        images = ms.Tensor(rng.randn(batch, 4).astype(np.float32))
        targets = ms.Tensor(np.eye(3, dtype=np.float32)[rng.randint(0, 3, batch)])
        step(images, targets, None, *optimizer.scalars(1e-3))[0].asnumpy()
        return len(released)

    assert [run(2), run(2), run(5), run(5), run(2)] == [1, 1, 2, 2, 2]
