"""Model architectures and PPT settings shared by both frameworks.

Both `ms_ppt` and `pt_reference` build their models from `MODEL_CONFIGS`, so a name means the same network on
either side, and both derive the static token schedule (tokens in, r, tokens out per block) from `token_schedule`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

RSpec = Union[int, Sequence[int], Tuple[int, float]]
ThresholdSpec = Union[float, Sequence[float]]  # one threshold for every PP block, or one per PP block


ACTIVATIONS = ("gelu", "quick_gelu")  # exact (erf) GELU; CLIP's x * sigmoid(1.702 x)
TRAINING_FLAGS = ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate")


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """A ViT as timm's VisionTransformer flags describe it; checkpoint shapes and MACs are derived from it."""
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_classes: int = 1000
    in_chans: int = 3
    num_prefix_tokens: int = 1  # 1: class token; 2: class + distillation token (distilled DeiT, two heads)
    init_values: Optional[float] = None  # LayerScale (DeiT-III): ls1.gamma / ls2.gamma in every block
    no_embed_class: bool = False  # pos_embed covers the patches only and is added before the prefix is joined
    pre_norm: bool = False  # CLIP: a LayerNorm (norm_pre) after the position embedding, no patch-projection bias
    norm_eps: float = 1e-6
    act: str = "gelu"
    # training-time regularisation, as timm's flags (identity in eval; no effect on checkpoints)
    drop_rate: float = 0.0  # dropout before the head
    pos_drop_rate: float = 0.0  # dropout after the position embedding
    proj_drop_rate: float = 0.0  # dropout after the attention projection and after each MLP layer
    attn_drop_rate: float = 0.0  # dropout on the attention map
    drop_path_rate: float = 0.0  # stochastic depth of the last block; earlier blocks rise linearly from 0

    def __post_init__(self):
        if self.num_prefix_tokens not in (1, 2):
            raise ValueError(f"num_prefix_tokens must be 1 (class token) or 2 (class + distillation), "
                             f"got {self.num_prefix_tokens}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, numbers.Integral) \
                or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: no head), got {self.num_classes!r}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        for flag in TRAINING_FLAGS:
            rate = getattr(self, flag)
            if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
                raise ValueError(f"{flag} must be a number in [0, 1), got {rate!r}")
            object.__setattr__(self, flag, float(rate))

    @property
    def drop_path_rates(self) -> List[float]:
        """Per-block stochastic depth, timm's rule: linspace(0, drop_path_rate, depth) in float32."""
        return np.linspace(0.0, self.drop_path_rate, self.depth, dtype=np.float32).tolist()

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @property
    def pos_embed_tokens(self) -> int:
        return self.num_patches if self.no_embed_class else self.num_tokens

    @property
    def distilled(self) -> bool:
        return self.num_prefix_tokens == 2

    @property
    def patch_bias(self) -> bool:
        return not self.pre_norm  # as timm: pre-norm (CLIP) towers have no patch-projection bias

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


def _arch(embed_dim, depth, num_heads, img_size=224, patch_size=16, **flags) -> ArchConfig:
    return ArchConfig(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                      num_heads=num_heads, **flags)


DISTILLED = dict(num_prefix_tokens=2)
DEIT3 = dict(no_embed_class=True, init_values=1e-6)
CLIP = dict(pre_norm=True, norm_eps=1e-5)

# Names and flags follow timm's registry.
MODEL_CONFIGS: Dict[str, ArchConfig] = {
    "deit_tiny_patch16_224": _arch(192, 12, 3),
    "deit_small_patch16_224": _arch(384, 12, 6),
    "deit_base_patch16_224": _arch(768, 12, 12),
    "deit_tiny_patch16_384": _arch(192, 12, 3, img_size=384),
    "deit_small_patch16_384": _arch(384, 12, 6, img_size=384),
    "deit_base_patch16_384": _arch(768, 12, 12, img_size=384),
    "deit_tiny_distilled_patch16_224": _arch(192, 12, 3, **DISTILLED),
    "deit_small_distilled_patch16_224": _arch(384, 12, 6, **DISTILLED),
    "deit_base_distilled_patch16_224": _arch(768, 12, 12, **DISTILLED),
    "deit_base_distilled_patch16_384": _arch(768, 12, 12, img_size=384, **DISTILLED),
    "deit3_small_patch16_224": _arch(384, 12, 6, **DEIT3),
    "deit3_small_patch16_384": _arch(384, 12, 6, img_size=384, **DEIT3),
    "deit3_base_patch16_224": _arch(768, 12, 12, **DEIT3),
    "deit3_base_patch16_384": _arch(768, 12, 12, img_size=384, **DEIT3),
    "vit_tiny_patch16_224": _arch(192, 12, 3),
    "vit_small_patch16_224": _arch(384, 12, 6),
    "vit_base_patch16_224": _arch(768, 12, 12),
    "vit_base_patch32_224": _arch(768, 12, 12, patch_size=32),
    "vit_large_patch16_224": _arch(1024, 24, 16),
    "vit_base_patch16_384": _arch(768, 12, 12, img_size=384),
    "vit_base_patch16_clip_224": _arch(768, 12, 12, **CLIP),
    "vit_base_patch16_clip_quickgelu_224": _arch(768, 12, 12, act="quick_gelu", **CLIP),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """A model's evaluation preprocessing (timm's pretrained_cfg): resize the shorter side to img_size / crop_pct,
    centre crop img_size, scale to [0, 1], normalise with mean and std."""
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    crop_pct: Optional[float] = None  # None: the DeiT authors' eval, 0.875 at 224 and the full image at 384
    interpolation: str = "bicubic"


INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)
AUGREG_224 = DataConfig(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9)  # timm's ViT weights (augreg)
# As timm's pretrained_cfg of each name's default weights, except DeiT's own models, which keep the DeiT authors'
# eval (0.875 at 224; timm says 0.9).
DATA_CONFIGS: Dict[str, DataConfig] = {
    "deit3_small_patch16_224": DataConfig(crop_pct=0.9),
    "deit3_base_patch16_224": DataConfig(crop_pct=0.9),
    "vit_tiny_patch16_224": AUGREG_224,
    "vit_small_patch16_224": AUGREG_224,
    "vit_base_patch16_224": AUGREG_224,
    "vit_base_patch32_224": AUGREG_224,
    "vit_large_patch16_224": AUGREG_224,
    "vit_base_patch16_384": DataConfig(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=1.0),
    # CLIP towers: OpenAI's mean/std; timm's default weights are laion2b_ft_in12k_in1k and metaclip_2pt5b
    "vit_base_patch16_clip_224": DataConfig(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, crop_pct=0.95),
    "vit_base_patch16_clip_quickgelu_224": DataConfig(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, crop_pct=1.0),
}


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where a model's official weights are published: the file's URL and, where the publisher gives one, the
    sha256 (or its prefix, as the DeiT file names carry)."""
    url: str
    sha256: Optional[str] = None
    cache_name: Optional[str] = None  # the file's name in the cache, where the URL's own is not unique

    @property
    def file_name(self) -> str:
        return self.cache_name or self.url.rsplit("/", 1)[-1]


DEIT_RELEASES = "https://dl.fbaipublicfiles.com/deit/"
# The DeiT authors' release files (the hash prefix is part of each name, torch.hub's convention).
PRETRAINED: Dict[str, WeightsSource] = {
    name: WeightsSource(f"{DEIT_RELEASES}{name}-{prefix}.pth", prefix) for name, prefix in (
        ("deit_tiny_patch16_224", "a1311bcf"), ("deit_small_patch16_224", "cd65a155"),
        ("deit_base_patch16_224", "b5f2ef4d"), ("deit_base_patch16_384", "8de9b5d1"),
        ("deit_tiny_distilled_patch16_224", "b40b3cf7"), ("deit_small_distilled_patch16_224", "649709d9"),
        ("deit_base_distilled_patch16_224", "df68dfff"), ("deit_base_distilled_patch16_384", "d0272ac0"))
}
# DeiT-III's release files publish no hash: a download is proven whole by reading it strictly.
PRETRAINED.update({f"deit3_{size}_patch16_{res}": WeightsSource(f"{DEIT_RELEASES}deit_3_{size}_{res}_1k.pth")
                   for size in ("small", "base") for res in (224, 384)})
# ViT and CLIP: timm's default weights for the name, as safetensors on the Hugging Face hub (read strictly too).
PRETRAINED.update({name: WeightsSource(f"https://huggingface.co/timm/{repo}/resolve/main/model.safetensors",
                                       cache_name=f"{repo}.safetensors") for name, repo in (
    ("vit_tiny_patch16_224", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
    ("vit_small_patch16_224", "vit_small_patch16_224.augreg_in21k_ft_in1k"),
    ("vit_base_patch16_224", "vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    ("vit_base_patch32_224", "vit_base_patch32_224.augreg_in21k_ft_in1k"),
    ("vit_large_patch16_224", "vit_large_patch16_224.augreg_in21k_ft_in1k"),
    ("vit_base_patch16_384", "vit_base_patch16_384.augreg_in21k_ft_in1k"),
    ("vit_base_patch16_clip_224", "vit_base_patch16_clip_224.laion2b_ft_in12k_in1k"),
    ("vit_base_patch16_clip_quickgelu_224", "vit_base_patch16_clip_224.metaclip_2pt5b"))})  # a 512-d embedding head


def data_config(name: str) -> DataConfig:
    """The preprocessing a registered model was trained with (DeiT's unless listed in DATA_CONFIGS)."""
    get_arch(name)
    return DATA_CONFIGS.get(name, DataConfig())


# The paper's off-the-shelf settings (DeiT-S); DeiT-B at 11.6 GMACs corresponds to r=47.
DEFAULT_R = 50
DEFAULT_PP_LOC_LIST = (3, 6, 9)
DEFAULT_THRESHOLD = 7e-5

# The reduction rule of every PP block (docs/ppt-spec.md, "Methods"). "ppt" is the authors' adaptive choice per image;
# the others apply one rule to every image: PPT's pruning or pooling alone, EViT/SPViT's pruning that fuses the dropped
# tokens into one extra token, and 2211.11315's decouple-and-merge.
METHODS = ("ppt", "prune", "pool", "prune_fuse", "decouple_merge")
DEFAULT_METHOD = "ppt"
SINGLE_RULE_METHODS = ("prune_fuse", "decouple_merge")  # their own dest maps; the others are PPT's reduction

# what the eval tools run with no options: DeiT-Tiny on the sample shipped in ms_ppt/demo-data
DEMO_MODEL = "deit_tiny_patch16_224"
DEMO_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ms_ppt", "demo-data")


def get_arch(name: str) -> ArchConfig:
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; known models: {', '.join(sorted(MODEL_CONFIGS))}") from None


def model_arch(name: str, img_size: Optional[int] = None) -> ArchConfig:
    """The registered architecture, at another image size if asked (a multiple of its patch size; the position
    embedding is resampled on load, and the token schedule and MACs follow the new token count)."""
    return at_image_size(get_arch(name), img_size, name)


def at_image_size(arch: ArchConfig, img_size: Optional[int], name: str) -> ArchConfig:
    if img_size is None or img_size == arch.img_size:
        return arch
    if isinstance(img_size, bool) or not isinstance(img_size, numbers.Integral) or img_size <= 0:
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
    if img_size % arch.patch_size:
        raise ValueError(f"img_size {img_size} is not a multiple of {name}'s patch size {arch.patch_size}")
    return dataclasses.replace(arch, img_size=int(img_size))


def is_schedule(r) -> bool:
    """True for a ToMe-style (r, inflection) pair, as opposed to a per-PP-block list."""
    return isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], (float, np.floating))


def parse_r(num_layers: int, r: RSpec) -> List[int]:
    """ToMe's schedule over `num_layers`: an int, a list (padded with zeros), or (r, inflection)."""
    if not isinstance(r, int) and not is_schedule(r):
        r = [int(v) for v in r]
        if len(r) > num_layers:
            raise ValueError(f"r has {len(r)} entries but the model has only {num_layers} blocks")
        return r + [0] * (num_layers - len(r))
    inflect = 0.0
    if is_schedule(r):
        r, inflect = r
    min_val = int(r * (1.0 - inflect))
    max_val = 2 * r - min_val
    step = (max_val - min_val) / max(num_layers - 1, 1)
    return [int(min_val + step * i) for i in range(num_layers)]


def _integer(value, what: str) -> int:
    """An int (NumPy integers too); bools, floats, strings and None are refused, not truncated or parsed."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def _r_spec(r, num_pp: int) -> RSpec:
    """r as an int, a tuple with one int per PP block, or a ToMe (int r, float inflection) pair."""
    if is_schedule(r):
        return (_integer(r[0], "r"), float(r[1]))
    if isinstance(r, (str, bytes)) or not isinstance(r, (numbers.Integral, Sequence, np.ndarray)):
        raise TypeError(f"r must be an int, one int per PP block, or an (r, inflection) pair; got {r!r}")
    if isinstance(r, numbers.Integral) or (isinstance(r, np.ndarray) and r.ndim == 0):
        return _integer(r.item() if isinstance(r, np.ndarray) else r, "r")
    values = tuple(_integer(v, "each r value") for v in r)
    if len(values) != num_pp:
        raise ValueError(f"r lists {len(values)} values for {num_pp} PP blocks: give one value, or one per PP block")
    return values


def _threshold(value, what: str = "threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return float(value)


def _threshold_spec(threshold, num_pp: int) -> ThresholdSpec:
    """threshold as a float, or a tuple with one float per PP block."""
    if isinstance(threshold, np.ndarray) and threshold.ndim == 0:
        threshold = threshold.item()
    if isinstance(threshold, (Sequence, np.ndarray)) and not isinstance(threshold, (str, bytes)):
        values = tuple(_threshold(v, "each threshold value") for v in threshold)
        if len(values) != num_pp:
            raise ValueError(f"threshold lists {len(values)} values for {num_pp} PP blocks: give one value, or one "
                             f"per PP block")
        return values
    return _threshold(threshold)


@dataclasses.dataclass(frozen=True)
class PPTConfig:
    """PPT hyper-parameters; `r` is an int, one int per PP block, or a ToMe (r, inflection) schedule; `threshold`
    a float or one float per PP block (the i-th PP block takes the i-th). Values are checked, never coerced: a
    wrong type is a TypeError, a wrong value a ValueError."""
    r: RSpec = DEFAULT_R
    pp_loc_list: Tuple[int, ...] = DEFAULT_PP_LOC_LIST
    threshold: ThresholdSpec = DEFAULT_THRESHOLD
    prop_attn: bool = True
    trace_source: bool = False
    method: str = DEFAULT_METHOD

    def __post_init__(self):
        if isinstance(self.pp_loc_list, (str, bytes)) or not isinstance(self.pp_loc_list, (Sequence, np.ndarray)):
            raise TypeError(f"pp_loc_list must be a sequence of block indices, got {self.pp_loc_list!r}")
        pp_loc_list = tuple(_integer(i, "each pp_loc_list entry") for i in self.pp_loc_list)
        object.__setattr__(self, "pp_loc_list", pp_loc_list)
        object.__setattr__(self, "r", _r_spec(self.r, len(pp_loc_list)))
        if list(pp_loc_list) != sorted(set(pp_loc_list)) or min(pp_loc_list, default=0) < 0:
            raise ValueError(f"pp_loc_list must be strictly increasing block indices >= 0, got {list(pp_loc_list)}")
        object.__setattr__(self, "threshold", _threshold_spec(self.threshold, len(pp_loc_list)))
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for flag in ("prop_attn", "trace_source"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
            object.__setattr__(self, flag, bool(getattr(self, flag)))
        r_values = [self.r[0]] if is_schedule(self.r) else list(self.r) if isinstance(self.r, tuple) else [self.r]
        if min(r_values, default=0) < 0:
            raise ValueError(f"r must be >= 0, got {self.r}")

    @classmethod
    def from_settings(cls, ppt_config: Optional["PPTConfig"] = None, **settings) -> "PPTConfig":
        """The one way factories take PPT settings: a PPTConfig, or its fields as keywords (None = default), not
        both."""
        given = {k: v for k, v in settings.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown PPT setting(s): {', '.join(unknown)}")
        if ppt_config is None:
            return cls(**given)
        if not isinstance(ppt_config, cls):
            raise TypeError(f"ppt_config must be a PPTConfig, got {type(ppt_config).__name__}")
        if given:
            raise TypeError(f"give the PPT settings either as ppt_config=PPTConfig(...) or as keywords "
                            f"({', '.join(sorted(given))}), not both")
        return ppt_config

    @property
    def per_block_threshold(self) -> bool:
        return isinstance(self.threshold, tuple)

    def threshold_per_pp_block(self) -> List[float]:
        """PPT's threshold at each PP block, in pp_loc_list order."""
        return list(self.threshold) if self.per_block_threshold else [self.threshold] * len(self.pp_loc_list)

    @property
    def threshold_text(self) -> str:
        """The threshold(s) as the tools print them: '7e-05', or one per PP block ('0 7e-05 1')."""
        return " ".join(f"{t:g}" for t in self.threshold_per_pp_block()) if self.per_block_threshold \
            else f"{self.threshold:g}"

    @property
    def policy_threshold(self) -> float:
        """The variance threshold that gives the method's per-image policy: PPT's own; 0 makes every image prune
        and infinity every image pool (so prune-only and pool-only are PPT's reduction with the choice fixed).
        With one threshold per PP block, ask policy_threshold_at(block) instead."""
        if self.per_block_threshold and self.method == DEFAULT_METHOD:
            raise ValueError("this PPTConfig has one threshold per PP block: use policy_threshold_at(block)")
        return {"prune": 0.0, "pool": math.inf}.get(self.method, self.threshold)

    def policy_threshold_at(self, block: int) -> float:
        """policy_threshold for the PP block with this (model) block index."""
        if block not in self.pp_loc_list:
            raise ValueError(f"block {block} is not a PP block (pp_loc_list {list(self.pp_loc_list)})")
        own = self.threshold_per_pp_block()[self.pp_loc_list.index(block)]
        return {"prune": 0.0, "pool": math.inf}.get(self.method, own)

    def r_per_pp_block(self, depth: int) -> List[int]:
        """The i-th PP block takes the i-th value of the schedule over all blocks (the authors' `pop(0)`)."""
        if isinstance(self.r, tuple) and not is_schedule(self.r):
            return list(self.r)
        return parse_r(depth, self.r)[:len(self.pp_loc_list)]


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    index: int
    tokens_in: int
    r: int  # effective r (0 for non-PP blocks and clamped PP blocks): the tokens dropped or merged away
    is_pp: bool
    fused: int = 0  # 1 where prune_fuse adds the dropped tokens' fused token

    @property
    def tokens_out(self) -> int:
        return self.tokens_in - self.r + self.fused


def max_r(num_tokens: int, num_prefix_tokens: int = 1) -> int:
    """The most tokens a PP block can remove: half its patch tokens (the prefix tokens are protected)."""
    return (num_tokens - num_prefix_tokens) // 2


def token_schedule(num_tokens: int, depth: int, ppt: PPTConfig, num_prefix_tokens: int = 1) -> List[BlockPlan]:
    """Static token counts: every image follows this trajectory whatever its policies."""
    for i in ppt.pp_loc_list:
        if not 0 <= i < depth:
            raise ValueError(f"pp_loc_list entry {i} is outside the model's blocks 0..{depth - 1}")
    r_values = dict(zip(ppt.pp_loc_list, ppt.r_per_pp_block(depth)))
    plans, n = [], num_tokens
    for i in range(depth):
        is_pp = i in r_values
        r_eff = max(0, min(r_values[i], max_r(n, num_prefix_tokens))) if is_pp else 0
        plan = BlockPlan(index=i, tokens_in=n, r=r_eff, is_pp=is_pp, fused=int(r_eff > 0 and ppt.method == "prune_fuse"))
        plans.append(plan)
        n = plan.tokens_out
    return plans


def reducing_blocks(arch: ArchConfig, ppt: PPTConfig) -> List[int]:
    """Indices of the blocks that actually remove tokens (PP blocks whose clamped r is positive)."""
    return [p.index for p in arch_schedule(arch, ppt) if p.r > 0]


def arch_schedule(arch: ArchConfig, ppt: PPTConfig) -> List[BlockPlan]:
    """token_schedule for a model."""
    return token_schedule(arch.num_tokens, arch.depth, ppt, arch.num_prefix_tokens)
