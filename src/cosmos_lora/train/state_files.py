"""Resume state on disk in formats whose loading can run no code.

A state (a nested tree of dicts, lists, tuples, numbers, strings, None and tensors, as
`Optimizer.state_dict()` and the trainer's counters are) is stored as two files:

    <name>.safetensors   every tensor, bit for bit (LoRA, optimizer moments, EMA, RNG ByteTensors)
    <name>.json          the tree itself, each tensor replaced by {"__tensor__": <its safetensors key>}

JSON keeps what the tree needs to come back identical: a tuple is {"__tuple__": [...]}, a dict with
non-string keys (the optimizer's per-parameter state is keyed by int) is {"__items__": [[key, value], ...]}.

Run folders written before this format hold `<name>.pt` pickles. They are read with
`torch.load(weights_only=True)`, torch's allow-list unpickler, which rebuilds tensors and plain
containers and refuses any other global before calling it.
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from cosmos_lora.errors import UserError, load_failure

TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"
_TAGS = (TENSOR, TUPLE, ITEMS)


def save_state(folder: Path, name: str, tree: dict) -> None:
    """Writes `<folder>/<name>.safetensors` and `<name>.json` (the caller publishes the folder)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(tree, "", tensors)
    # plain file writes: a full disk raises OSError here (safetensors' own writer was seen to stay silent),
    # and the files get the umask's mode like every other published file
    (Path(folder) / f"{name}.safetensors").write_bytes(safetensors_bytes(tensors))
    (Path(folder) / f"{name}.json").write_text(json.dumps(skeleton, indent=1))


def state_exists(folder: Path, name: str) -> bool:
    return (Path(folder) / f"{name}.json").is_file() or (Path(folder) / f"{name}.pt").is_file()


def load_state(folder: Path, name: str) -> dict:
    """The tree `save_state` wrote; from an older run folder, its `<name>.pt` through torch's safe unpickler."""
    folder = Path(folder)
    skeleton_path, tensors_path = folder / f"{name}.json", folder / f"{name}.safetensors"
    if skeleton_path.is_file():
        try:
            with safe_open(str(tensors_path), framework="pt") as f:
                tensors = {key: f.get_tensor(key) for key in f.keys()}
            return _decode(json.loads(skeleton_path.read_text()), tensors)
        except Exception as error:  # truncated, foreign or edited files fail in many ways
            raise _unreadable(skeleton_path, error) from None
    legacy = folder / f"{name}.pt"
    try:  # a global outside torch's allow-list is refused before it is called
        return torch.load(legacy, map_location="cpu", weights_only=True)
    except Exception as error:
        raise _unreadable(legacy, error) from None


def _unreadable(path: Path, error: Exception) -> UserError:
    return UserError(
        f"The saved state {path} cannot be read ({load_failure(error)}).",
        "resume from an intact copy of the run folder, or start a new run with --name NEW.",
    )


def _encode(value, path: str, tensors: dict[str, torch.Tensor]):
    if isinstance(value, torch.Tensor):
        if path in tensors:
            raise ValueError(f"two tensors of the state would be stored as {path!r}")
        tensors[path] = value.detach().to("cpu", copy=True).contiguous()  # never shares storage with another entry
        return {TENSOR: path}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            if any(key in _TAGS for key in value):
                raise ValueError(f"the state at {path!r} uses a reserved key {_TAGS}")
            return {key: _encode(item, _child(path, key), tensors) for key, item in value.items()}
        return {ITEMS: [[_plain(key, path), _encode(item, _child(path, key), tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE: [_encode(item, _child(path, i), tensors) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, _child(path, i), tensors) for i, item in enumerate(value)]
    return _plain(value, path)


def _child(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _plain(value, path: str):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"the state at {path!r} holds a {type(value).__name__}, which has no safe file format here")


def _decode(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if TENSOR in value:
        return tensors[value[TENSOR]]
    if TUPLE in value:
        return tuple(_decode(item, tensors) for item in value[TUPLE])
    if ITEMS in value:
        return {key: _decode(item, tensors) for key, item in value[ITEMS]}
    return {key: _decode(item, tensors) for key, item in value.items()}
