"""PPT on timm's VisionTransformer in PyTorch: the reference the MindSpore port is tested against."""
from pt_reference.evaluation import PTEvalOptions, evaluate
from pt_reference.factory import create_model, list_models, run_with_trace
from pt_reference.vision_transformer import PPTVisionTransformer, apply_ppt, check_supported, set_trace

__all__ = ["apply_ppt", "check_supported", "create_model", "evaluate", "PTEvalOptions", "list_models", "run_with_trace", "set_trace",
           "PPTVisionTransformer"]
