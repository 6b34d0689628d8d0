from cosmos_lora.config.experiment import apply_overrides, load_preset, resolved, save_config
from cosmos_lora.config.lazy import L, LazyDict, check_targets, instantiate, lazy_dict

__all__ = [
    "L", "LazyDict", "apply_overrides", "check_targets", "instantiate", "lazy_dict", "load_preset", "resolved",
    "save_config",
]
