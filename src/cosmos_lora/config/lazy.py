"""LazyDict configs: an omegaconf tree whose nodes may be deferred calls.

    optimizer = L(torch.optim.AdamW)(lr=1e-4, weight_decay=0.1)   # a DictConfig, still editable
    optimizer.lr = 5e-5
    instantiate(optimizer, params=model.parameters())             # -> AdamW(...), via hydra

A deferred call is `{"_target_": "module.qualname", **kwargs}`, so a saved tree is plain YAML.

A config.yaml travels with run folders, and hydra would call any importable name it gives
(`torch.load` of a pickle, `os.system`). So a tree may only name the callables in
`allowed_targets()`; any other `_target_` is refused, by name, before anything is imported or
called. Python presets are code the user chose to run: what they build is checked the same way.
"""

import functools
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import instantiate as _hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cosmos_lora.errors import UserError

LazyDict = DictConfig
TARGET = "_target_"
# this package's callables that configs are meant to name (as strings: no imports here)
PACKAGE_TARGETS = ("cosmos_lora.data.dataset.VideoTextDataset", "cosmos_lora.train.schedule.lr_multiplier")


def _target_name(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


class L:
    """`L(fn)(**kwargs)` describes the call `fn(**kwargs)` without making it."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, **kwargs: Any) -> LazyDict:
        return OmegaConf.create({"_target_": _target_name(self.fn), **kwargs}, flags={"allow_objects": False})


@functools.cache
def allowed_targets() -> frozenset[str]:
    """PACKAGE_TARGETS and every torch optimizer, under its public and its defining module's name."""
    names = set(PACKAGE_TARGETS)
    for name in dir(torch.optim):
        cls = getattr(torch.optim, name)
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer:
            names.update({f"torch.optim.{name}", _target_name(cls)})
    return frozenset(names)


def check_targets(tree: LazyDict | dict, prefix: str = "", where: str = "the config") -> None:
    """Refuses (UserError) the first `_target_` anywhere in the tree that is not an allowed target."""
    for key, target in _targets(_plain_tree(tree), prefix):
        if not isinstance(target, str) or target not in allowed_targets():
            raise UserError(
                f"{key} in {where} is {target!r}, which a config may not call (it could run any code).",
                f"name one of {', '.join(PACKAGE_TARGETS)} or a torch.optim optimizer; other code belongs "
                "in a Python preset (--config FILE.py), which is code you choose to run.",
            )


def _plain_tree(tree: Any) -> Any:
    """The tree as dicts and lists, with `${...}` filled in as hydra would fill them."""
    if not isinstance(tree, (DictConfig, ListConfig)):
        return tree
    try:
        return OmegaConf.to_container(tree, resolve=True)
    except OmegaConfBaseException:  # an unresolvable `${...}` target is checked as the text it is
        return OmegaConf.to_container(tree, resolve=False)


def _targets(node: Any, key: str):
    """(dotted key, value) of every `_target_` in a plain container tree."""
    if isinstance(node, dict):
        for name, value in node.items():
            child = f"{key}.{name}" if key else str(name)
            if name == TARGET:
                yield child, value
            else:
                yield from _targets(value, child)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _targets(value, f"{key}[{index}]")


def instantiate(node: LazyDict, **kwargs: Any) -> Any:
    """Realises a deferred call (recursively) of allowed targets; extra kwargs are passed to the outer call."""
    check_targets(node, _full_key(node))
    try:
        return _hydra_instantiate(node, _convert_="all", **kwargs)
    except Exception as error:
        raise RuntimeError(f"could not instantiate {node.get('_target_')}: {error}") from error


def lazy_dict(**tree: Any) -> LazyDict:
    return OmegaConf.create(tree)


def _full_key(node: LazyDict) -> str:
    """Where `node` sits in its config (`optimizer`), for messages; "" for a root or a plain dict."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return ""
    try:
        return str(node._get_full_key(None))
    except Exception:  # omegaconf-internal; only the message depends on it
        return ""
