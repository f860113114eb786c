"""EMA weights in a training checkpoint: the 'ema.' entries are what ModelEma holds (timm's update, ema = d * ema +
(1 - d) * weights after each step), they lag the weights, and every reader takes them on request."""
import mindspore as ms
import numpy as np
import pytest

from ms_ppt import training
from ms_ppt.factory import load_checkpoint
from ms_ppt.vision_transformer import VisionTransformer
from ppt_common.config import ArchConfig, PPTConfig

ARCH = ArchConfig(img_size=32, embed_dim=24, depth=2, num_heads=2, num_classes=3)
DECAY = 0.5


def test_a_training_checkpoint_holds_what_model_ema_holds(tmp_path):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    model = VisionTransformer(ARCH, PPTConfig(r=0, pp_loc_list=()), custom_kernels=False)
    model.set_train(True)
    optimizer = training.build_optimizer(model)
    ema = training.ModelEma(model.trainable_params(), DECAY)
    step = training.TrainStep(training.LossCell(model, training.build_loss(0.0)), optimizer)
    rng = np.random.RandomState(0)
    x = ms.Tensor(rng.randn(4, 3, 32, 32).astype(np.float32))
    targets = ms.Tensor(np.eye(3, dtype=np.float32)[[0, 1, 2, 0]])
    expected = {p.name: p.asnumpy().astype(np.float64) for p in model.trainable_params()}
    for _ in range(3):
        step(x, targets, None, *optimizer.scalars(1e-2))
        ema()
        for p in model.trainable_params():
            expected[p.name] = DECAY * expected[p.name] + (1 - DECAY) * p.asnumpy()
    path = str(tmp_path / "checkpoint.ckpt")
    training.save_training_checkpoint(path, model, optimizer, ema, {"epoch": 0})

    from convert import read_state_dict
    held = {p.name[len("ema."):]: p.asnumpy() for p in ema.ema}
    weights = {p.name: p.asnumpy() for p in model.get_parameters()}
    saved = read_state_dict(path, ema=True)
    assert sorted(saved) == sorted(held) == sorted(weights)
    for name in held:
        np.testing.assert_array_equal(saved[name], held[name], err_msg=name)
        np.testing.assert_allclose(held[name], expected[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert not np.array_equal(saved["head.weight"], weights["head.weight"])  # three steps at decay 0.5: it lags

    plain = VisionTransformer(ARCH, PPTConfig(r=0, pp_loc_list=()), custom_kernels=False)
    averaged = VisionTransformer(ARCH, PPTConfig(r=0, pp_loc_list=()), custom_kernels=False)
    load_checkpoint(plain, path)
    load_checkpoint(averaged, path, ema=True)
    for model_ in (plain, averaged):
        model_.set_train(False)
    np.testing.assert_array_equal(averaged.head.weight.asnumpy(), held["head.weight"])
    assert np.abs(plain(x).asnumpy() - averaged(x).asnumpy()).max() > 1e-4


def test_a_file_without_ema_weights_is_refused_by_name(tmp_path):
    from convert import CheckpointError, write_state_dict
    model = VisionTransformer(ARCH, PPTConfig(r=0, pp_loc_list=()), custom_kernels=False)
    path = str(tmp_path / "weights.ckpt")
    write_state_dict({p.name: p.asnumpy() for p in model.get_parameters()}, path)
    with pytest.raises(CheckpointError, match=r"weights.ckpt: holds no EMA weights \('ema.' entries"):
        load_checkpoint(model, path, ema=True)
