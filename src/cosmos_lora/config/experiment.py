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

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from cosmos_lora.config.lazy import LazyDict, check_targets
from cosmos_lora.errors import Problems, UserError
from cosmos_lora.files import publishing

PACKAGED_PRESETS = Path(__file__).resolve().parents[1] / "presets"
SECTIONS = ("job", "model", "trainer", "optimizer", "scheduler", "dataloader_train", "checkpoint")


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
        config = _read_yaml(path)
        check_targets(config, where=str(path))
    else:
        config = _run_preset(path)
    missing = [section for section in SECTIONS if section not in config]
    if missing:
        raise UserError(f"{path} is not an experiment config: it has no {', '.join(missing)} section.",
                        f"give a preset {preset_names()} or a run's config.yaml.")
    return config


def _read_yaml(path: Path) -> LazyDict:
    try:
        config = OmegaConf.load(path)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML: {error.problem or error.context}{where}.",
                        "correct that line, or start from a run's config.yaml.") from None
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a valid YAML config: {str(error).splitlines()[0]}.",
                        "correct it, or start from a run's config.yaml.") from None
    if not OmegaConf.is_dict(config):
        raise UserError(f"{path} is not an experiment config: it holds no key: value tree.",
                        f"give a preset {preset_names()} or a run's config.yaml.")
    return config


def _run_preset(path: Path) -> LazyDict:
    """A `.py` preset is code (as the official LazyDict configs are): it runs, and defines `config`."""
    spec = importlib.util.spec_from_file_location(f"cosmos_lora_preset_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise UserError(f"{path} is not valid Python: {error.msg} at line {error.lineno}.", "correct that line.") from None
    if not OmegaConf.is_dict(getattr(module, "config", None)):
        raise UserError(f"{path} defines no `config` LazyDict.", "define `config = lazy_dict(...)` as configs/*.py do.")
    return OmegaConf.create(OmegaConf.to_container(module.config))  # a private copy


def apply_overrides(config: LazyDict, overrides: dict[str, object] | list[str], problems: Problems | None = None) -> LazyDict:
    """Sets existing keys only, to values of the kind they hold: `optimizer.lr=5e-5` works, a typo like
    `optimiser.lr=...` or `optimizer.lr=fast` is refused. With `problems`, each refused override is
    added there and the others still apply; without, the first one raises."""
    found = Problems() if problems is None else problems
    pairs = overrides.items() if isinstance(overrides, dict) else overrides
    for pair in pairs:
        with found.check():
            _apply(config, *(pair if isinstance(pair, tuple) else _split_override(pair)))
        if problems is None:
            found.raise_any()
    return config


def _apply(config: LazyDict, key: str, value: object) -> None:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(config, parent) if parent else config
    if not OmegaConf.is_dict(node) or leaf not in node:
        raise UserError(f"Unknown config key {key!r}.", "print the tree with `posttrain --dry-run` and use a key from it.")
    current = OmegaConf.select(config, key, throw_on_resolution_failure=False)
    expected = _kind_mismatch(current, value)
    if expected:
        raise UserError(f"Override {key}={value!r}: {key} holds {expected} (the config has {current!r}).",
                        f"give {key} {expected}, e.g. {key}={current!r}.")
    try:
        OmegaConf.update(config, key, value, merge=False)
    except (ConfigKeyError, OmegaConfBaseException) as error:
        raise UserError(f"Cannot set {key!r}: {error}.") from error


def _kind_mismatch(current: object, value: object) -> str | None:
    """What `current`'s slot holds, when `value` is not of that kind (None or an interpolation fits anywhere)."""
    if current is None or value is None or (isinstance(value, str) and "${" in value):
        return None
    if OmegaConf.is_config(current):
        current = OmegaConf.to_container(current)
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    kinds = [(bool, "true or false", (bool,)), (int, "a whole number", (int,)), (float, "a number", (int, float)),
             (str, "text", (str,)), (list, "a list", (list, tuple)), (dict, "a key: value tree", (dict,))]
    for kind, name, accepted in kinds:
        if isinstance(current, kind):
            fits = isinstance(value, accepted) and (kind is bool or not isinstance(value, bool))
            return None if fits else name
    return None


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
