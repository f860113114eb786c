"""PPT (token Pruning and Pooling) for DeiT/ViT in MindSpore: `create_model(name, checkpoint=..., r=..., ...)`."""
from ppt_common.quiet import silence_mindspore_exit_noise

silence_mindspore_exit_noise()

from ppt_common.config import MODEL_CONFIGS, PPTConfig  # noqa: E402
from ms_ppt.factory import create_model, list_models, load_checkpoint, run_with_trace  # noqa: E402
from ms_ppt.vision_transformer import VisionTransformer  # noqa: E402

__all__ = ["create_model", "list_models", "load_checkpoint", "run_with_trace", "VisionTransformer", "PPTConfig", "MODEL_CONFIGS"]
