"""Official `model.pt` <-> our DiT: the key map, loading without a second copy, and saving.

The released `Cosmos-Predict1-7B-Text2World/model.pt` is one flat dict: `net.*` (the network),
`logvar.*` (the loss's uncertainty head) and the derived buffer `net.pos_embedder.seq`.
Post-trained checkpoints nest it as `{"model": ..., "ema": ...}` and add LoRA keys
(`...attn.to_q_lora.net.0.weight`); those are read by `cosmos_lora.model.lora`.
"""

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cosmos_lora.errors import UserError, load_failure
from cosmos_lora.model.edm import LogVarHead
from cosmos_lora.model.sizes import size_from_state_dict

if TYPE_CHECKING:
    from cosmos_lora.model.dit import CosmosDiT

# (official name without `net.`, diffusers name); {n} block index, {i} one digit, {p} the rest
_BLOCK = "blocks.block{n}.blocks"
KEY_TABLE: list[tuple[str, str]] = [
    ("x_embedder.proj.1.{p}", "patch_embed.proj.{p}"),
    ("extra_pos_embedder.{p}", "learnable_pos_embed.{p}"),
    ("t_embedder.1.{p}", "time_embed.t_embedder.{p}"),
    ("affline_norm.{p}", "time_embed.norm.{p}"),
    ("final_layer.linear.{p}", "proj_out.{p}"),
    ("final_layer.adaLN_modulation.{i}.{p}", "norm_out.linear_{i}.{p}"),
    (_BLOCK + ".0.adaLN_modulation.{i}.{p}", "transformer_blocks.{n}.norm1.linear_{i}.{p}"),
    (_BLOCK + ".1.adaLN_modulation.{i}.{p}", "transformer_blocks.{n}.norm2.linear_{i}.{p}"),
    (_BLOCK + ".2.adaLN_modulation.{i}.{p}", "transformer_blocks.{n}.norm3.linear_{i}.{p}"),
    (_BLOCK + ".2.block.layer1.{p}", "transformer_blocks.{n}.ff.net.0.proj.{p}"),
    (_BLOCK + ".2.block.layer2.{p}", "transformer_blocks.{n}.ff.net.2.{p}"),
] + [
    (f"{_BLOCK}.{j}.block.attn.{official}.{{p}}", f"transformer_blocks.{{n}}.{attn}.{ours}.{{p}}")
    for j, attn in ((0, "attn1"), (1, "attn2"))
    for official, ours in (
        ("to_q.0", "to_q"), ("to_q.1", "norm_q"), ("to_k.0", "to_k"), ("to_k.1", "norm_k"),
        ("to_v.0", "to_v"), ("to_out.0", "to_out.0"),
    )
]
DERIVED_KEYS = {"net.pos_embedder.seq"}
LOGVAR_PREFIX = "logvar."
LORA_MARKER = "_lora.net."

_FIELDS = {"n": r"(?P<n>\d+)", "i": r"(?P<i>\d)", "p": r"(?P<p>.+)"}


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(pattern + "$")


_TO_OURS = [(_compile(official), ours) for official, ours in KEY_TABLE]
_TO_OFFICIAL = [(_compile(ours), official) for official, ours in KEY_TABLE]


def _translate(key: str, rules) -> str | None:
    for pattern, template in rules:
        if match := pattern.match(key):
            return template.format(**match.groupdict())
    return None


def official_to_diffusers(key: str) -> str | None:
    """`net.blocks.block3.blocks.0.block.attn.to_q.0.weight` -> `transformer_blocks.3.attn1.to_q.weight`."""
    return _translate(key.removeprefix("net."), _TO_OURS) if key.startswith("net.") else None


def diffusers_to_official(key: str) -> str:
    official = _translate(key, _TO_OFFICIAL)
    if official is None:
        raise KeyError(f"{key} has no official name")
    return "net." + official


def base_fingerprint(path: Path, sample_bytes: int = 1 << 24) -> str:
    """sha256 of the base checkpoint's size, head and tail: cheap on 14 GB, catches a different base."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(sample_bytes))
        f.seek(max(0, size - sample_bytes))
        digest.update(f.read(sample_bytes))
    return digest.hexdigest()[:16]


def locate_dit(given: Path, checkpoints: Path) -> Path:
    """The checkpoint `--dit` names: a file, or a folder holding `model.pt` (as the official layout keeps
    them, e.g. `Cosmos-Predict1-7B-Text2World_post-trained/`); as given, else under the checkpoints root."""
    given = Path(given)
    for path in (given,) if given.is_absolute() else (given, checkpoints / given):
        if path.is_dir():
            if not (path / "model.pt").is_file():
                raise UserError(f"{path} holds no model.pt.", "pass the checkpoint file itself, or the folder that holds model.pt.")
            return path / "model.pt"
        if path.is_file():
            return path
    raise UserError(
        f"No DiT checkpoint at {given}" + ("" if given.is_absolute() else f" nor at {checkpoints / given}") + ".",
        "pass a model.pt or its folder, as a path or under the checkpoints root "
        "(e.g. Cosmos-Predict1-7B-Text2World_post-trained; `cosmos-lora merge` writes one).",
    )


def unwrap_container(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The flat state dict of a released (`{key: tensor}`) or post-trained (`{"model": ...}`) file."""
    return checkpoint["model"] if isinstance(checkpoint.get("model"), dict) else checkpoint


def read_official_checkpoint(path: Path) -> dict:
    """Memory-mapped, so reading costs no RAM until tensors are used."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"No DiT checkpoint at {path}.",
            "run `cosmos-lora download` or point --checkpoints-dir at the folder holding Cosmos-Predict1-7B-Text2World/.",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated download or a non-checkpoint file
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({load_failure(error)}).", "download it again.") from None


def split_official_state(state: dict[str, torch.Tensor]):
    """(network weights in diffusers names, logvar head weights, LoRA tensors, unknown keys)."""
    network, logvar, lora, unknown = {}, {}, {}, []
    for key, tensor in state.items():
        if LORA_MARKER in key:
            lora[key] = tensor
        elif key.startswith(LOGVAR_PREFIX):
            logvar[key.removeprefix(LOGVAR_PREFIX)] = tensor
        elif key in DERIVED_KEYS:
            continue
        elif (ours := official_to_diffusers(key)) is not None:
            network[ours] = tensor
        else:
            unknown.append(key)
    return network, logvar, lora, unknown


def load_official_dit(
    path: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple["CosmosDiT", LogVarHead]:
    """Builds the DiT on the meta device and assigns the checkpoint's tensors: never two copies."""
    from cosmos_lora.model.dit import build_dit  # diffusers: only where a network is built, not for reading files

    state = unwrap_container(read_official_checkpoint(path))
    network, logvar_state, _, unknown = split_official_state(state)
    net = build_dit(size_from_state_dict(state), device="meta")
    expected = net.state_dict()
    missing = sorted(set(expected) - set(network))
    mismatched = [k for k in network if k in expected and network[k].shape != expected[k].shape]
    unknown += [k for k in network if k not in expected]
    if missing or unknown or mismatched:
        raise UserError(
            f"{path} does not match the Cosmos-Predict1 DiT: "
            f"{len(missing)} missing ({', '.join(missing[:5])}), {len(unknown)} unexpected ({', '.join(unknown[:5])}), "
            f"{len(mismatched)} with other shapes ({', '.join(mismatched[:5])}).",
            "use an official Cosmos-Predict1 Text2World or Video2World model.pt.",
        )
    net.load_state_dict(network, strict=True, assign=True)
    logvar = LogVarHead()
    logvar.load_official_state(logvar_state, path)
    # nn.Module.to: diffusers' own `.to` would warn that it keeps no fp32 modules; the official
    # inference casts the whole network, learnable position embeddings included.
    torch.nn.Module.to(net, device=device, dtype=dtype)
    logvar.to(device=device)
    return net, logvar


def official_state_dict(net: "CosmosDiT", logvar: LogVarHead) -> dict[str, torch.Tensor]:
    """Our weights under the official names, as a released `model.pt` holds them."""
    state = {diffusers_to_official(k): v for k, v in net.state_dict().items()}
    positions = max(s // p for s, p in zip(net.config.max_size, net.config.patch_size))
    state["net.pos_embedder.seq"] = torch.arange(positions, dtype=torch.float32)
    state.update({LOGVAR_PREFIX + k: v for k, v in logvar.official_state_dict().items()})
    return state
