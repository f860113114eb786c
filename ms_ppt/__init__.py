"""PPT (token Pruning and Pooling) for DeiT/ViT in MindSpore: `create_model(name, checkpoint=..., r=..., ...)`,
`evaluate(model=..., data_path=[...]) -> report`, `train(model=..., resume=..., data_path=..., output_dir=...)`.

Importing it changes nothing global: it only adds the `ppt_*` entries to mindcv's model registry.
`mindcv_strict_loading()` makes mindcv's `checkpoint_path` as strict as `create_model(checkpoint=...)` for those
entries, and `silence_mindspore_exit_noise()` quiets MindSpore's C++ warnings and its interpreter-exit noise, as
the command-line tools do: both are explicit calls.
"""
from ppt_common.config import MODEL_CONFIGS, PPTConfig
from ppt_common.quiet import silence_mindspore_exit_noise
from ms_ppt.evaluation import MSEvalOptions, evaluate
from ms_ppt.factory import create_model, list_models, load_checkpoint, mindcv_strict_loading, run_with_trace
from ms_ppt.trainer import train
from ms_ppt.vision_transformer import VisionTransformer
from ppt_common.training import TrainOptions

__all__ = ["create_model", "evaluate", "MSEvalOptions", "list_models", "load_checkpoint", "mindcv_strict_loading",
           "run_with_trace", "silence_mindspore_exit_noise", "train", "TrainOptions", "VisionTransformer", "PPTConfig",
           "MODEL_CONFIGS"]
