"""eva02.backbone: the TrV (EVA-02) encoder, its RoPE, checkpoint layouts, layer-decay rule, and what of it trains
(freezing, LoRA: tuning). Needs only torch."""
from .checkpoint import LoadReport, load_checkpoint, official_p14_to_p16, read_state_dict, to_official
from .layer_decay import MIM_NO_DECAY, SEG_NO_DECAY, layer_id, lr_scale, no_decay_rule, param_groups
from .trv import ATTN_IMPLS, PRESETS, TrV, TrVConfig, create_trv, preset_config
from .tuning import LORA_TARGETS, LoRALinear, is_adapter_key, merge_lora

__all__ = [
    "ATTN_IMPLS", "PRESETS", "TrV", "TrVConfig", "create_trv", "preset_config",
    "LoadReport", "load_checkpoint", "official_p14_to_p16", "read_state_dict", "to_official",
    "MIM_NO_DECAY", "SEG_NO_DECAY", "layer_id", "lr_scale", "no_decay_rule", "param_groups",
    "LORA_TARGETS", "LoRALinear", "is_adapter_key", "merge_lora",
]
