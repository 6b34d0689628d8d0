"""Building an experiment: preset + CLI options + `key=value` overrides -> one resolved tree.

Presets are Python files in the project's `configs/` folder (or COSMOS_LORA_CONFIGS) that define
`config`, a LazyDict: code, run when loaded. The package reaches them as `cosmos_lora/presets` (a link
to `configs/` in the source tree, a copy in an installed wheel), so an installed package finds them too.
The saved `config.yaml` of a run is itself a valid `--config` input, so a run can always be repeated
from its folder; it is data, and may only name the callables `lazy.allowed_targets()` lists.
"""

import importlib.util
import os
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from cosmos_lora.config.lazy import LazyDict, check_targets
from cosmos_lora.errors import UserError
from cosmos_lora.files import publishing

PACKAGED_PRESETS = Path(__file__).resolve().parents[1] / "presets"


def configs_dir() -> Path:
    return Path(os.environ.get("COSMOS_LORA_CONFIGS") or PACKAGED_PRESETS)


def preset_names() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.py") if not p.stem.startswith("_"))


def load_preset(name_or_path: str | Path) -> LazyDict:
    """A preset by name (`tiny_lora`) or a config file (`.py` defining `config`, or a saved `.yaml`)."""
    path = Path(name_or_path)
    if path.suffix not in (".py", ".yaml", ".yml"):
        path = configs_dir() / f"{name_or_path}.py"
    if not path.is_file():
        raise UserError(
            f"No config {name_or_path!r} (looked for {path}).",
            f"use one of the presets {preset_names()} or the path of a run's config.yaml.",
        )
    if path.suffix in (".yaml", ".yml"):  # data, from anywhere: it may only name allowed callables
        config = OmegaConf.load(path)
        check_targets(config, where=str(path))
        return config
    spec = importlib.util.spec_from_file_location(f"cosmos_lora_preset_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return OmegaConf.create(OmegaConf.to_container(module.config))  # a private copy


def apply_overrides(config: LazyDict, overrides: dict[str, object] | list[str]) -> LazyDict:
    """Sets existing keys only: `optimizer.lr=5e-5` works, a typo like `optimiser.lr=...` is refused."""
    pairs = overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides)
    for key, value in pairs:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(config, parent) if parent else config
        if not OmegaConf.is_dict(node) or leaf not in node:
            raise UserError(f"Unknown config key {key!r}.", "print the tree with `posttrain --dry-run` and use a key from it.")
        try:
            OmegaConf.update(config, key, value, merge=False)
        except (ConfigKeyError, OmegaConfBaseException) as error:
            raise UserError(f"Cannot set {key!r}: {error}.") from error
    return config


def _split_override(text: str) -> tuple[str, object]:
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"Override {text!r} is not key=value.", "write it like `optimizer.lr=5e-5`, after `--`.")
    # omegaconf's parser, so `5e-5` is a float and `[k, out]` a list, as in the saved YAML
    return key.strip(), OmegaConf.select(OmegaConf.from_dotlist([text]), key.strip())


def resolved(config: LazyDict) -> LazyDict:
    """Interpolations filled in, so the saved file states every value."""
    try:
        return OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    except OmegaConfBaseException as error:
        raise UserError(f"The config does not resolve: {error}.") from error


def save_config(config: LazyDict, path: Path) -> None:
    """Atomic YAML write, read back once to prove it round-trips."""
    with publishing(Path(path)) as tmp:
        tmp.write_text(OmegaConf.to_yaml(config))
        if OmegaConf.load(tmp) != config:
            raise RuntimeError(f"config did not round-trip through YAML: {path}")


def to_yaml(config: LazyDict) -> str:
    return OmegaConf.to_yaml(config)


def changed_keys(old: LazyDict, new: LazyDict) -> list[str]:
    """Dotted keys whose values differ between two trees (or that only one of them has)."""
    before, after = _flatten(OmegaConf.to_container(old)), _flatten(OmegaConf.to_container(new))
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _flatten(tree: dict, prefix: str = "") -> dict:
    items = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            items.update(_flatten(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items
