"""PPT (token Pruning and Pooling) for DeiT/ViT in MindSpore: `create_model(name, checkpoint=..., r=..., ...)`,
`evaluate(model=..., data_path=[...]) -> report`, `train(model=..., resume=..., data_path=..., output_dir=...)`,
`run_sweep(...)`, `export_mindir(...)`: each takes the command line's option names as keyword arguments.

Importing it changes nothing global: it only adds the `ppt_*` entries to mindcv's model registry.
`mindcv_strict_loading()` makes mindcv's `checkpoint_path` as strict as `create_model(checkpoint=...)` for those
entries, and `silence_mindspore_exit_noise()` quiets MindSpore's C++ warnings and its interpreter-exit noise, as
the command-line tools do: both are explicit calls.
"""
from ppt_common.config import MODEL_CONFIGS, PPTConfig
from ppt_common.quiet import silence_mindspore_exit_noise
from ms_ppt.evaluation import MSEvalOptions, evaluate
from ms_ppt.export import ExportOptions, export_mindir
from ms_ppt.factory import create_model, list_models, load_checkpoint, mindcv_strict_loading, run_with_trace
from ms_ppt.sweep import SweepOptions, run_sweep
from ms_ppt.trainer import train
from ms_ppt.vision_transformer import VisionTransformer
from ppt_common.training import TrainOptions

__all__ = ["create_model", "evaluate", "export_mindir", "list_models", "load_checkpoint", "mindcv_strict_loading",
           "run_sweep", "run_with_trace", "silence_mindspore_exit_noise", "train", "ExportOptions", "MSEvalOptions",
           "SweepOptions", "TrainOptions", "VisionTransformer", "PPTConfig", "MODEL_CONFIGS"]
