"""LazyDict configs: an omegaconf tree whose nodes may be deferred calls.

    optimizer = L(torch.optim.AdamW)(lr=1e-4, weight_decay=0.1)   # a DictConfig, still editable
    optimizer.lr = 5e-5
    instantiate(optimizer, params=model.parameters())             # -> AdamW(...), via hydra

A deferred call is `{"_target_": "module.qualname", **kwargs}`, so a saved tree is plain YAML.
"""

from collections.abc import Callable
from typing import Any

from hydra.utils import instantiate as _hydra_instantiate
from omegaconf import DictConfig, OmegaConf

LazyDict = DictConfig


def _target_name(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


class L:
    """`L(fn)(**kwargs)` describes the call `fn(**kwargs)` without making it."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, **kwargs: Any) -> LazyDict:
        return OmegaConf.create({"_target_": _target_name(self.fn), **kwargs}, flags={"allow_objects": False})


def instantiate(node: LazyDict, **kwargs: Any) -> Any:
    """Realises a deferred call (recursively); extra kwargs are passed to the outer call."""
    try:
        return _hydra_instantiate(node, _convert_="all", **kwargs)
    except Exception as error:
        raise RuntimeError(f"could not instantiate {node.get('_target_')}: {error}") from error


def lazy_dict(**tree: Any) -> LazyDict:
    return OmegaConf.create(tree)
