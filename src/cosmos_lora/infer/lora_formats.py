"""LoRA files written by other tools, converted to our peft names (and back, for exports and tests).

    diffusers / peft  [transformer.]transformer_blocks.0.attn1.to_q.lora_A.weight, .lora_B.weight
                      scale = lora_alpha / r from the `lora_adapter_metadata` JSON, else 1
    ComfyUI           diffusion_model.blocks.block0.blocks.0.block.attn.to_q.0.lora_down.weight, .lora_up.weight
                      (official module names), optional `.alpha`: scale = alpha / rank, else 1
    official          net.blocks.block0.blocks.0.block.attn.to_q_lora.net.0.weight: `cosmos_lora.model.lora`

Whatever the format, the result is checked the same way: one rank, the same (block, target) grid
everywhere, targets among those `cosmos_lora.model.lora` knows.
NOTE: these tables belong next to `official_to_ours` in `model/lora.py`; they live here until that
file's owner moves them.
"""

import json
import math

import torch

from cosmos_lora.errors import UserError
from cosmos_lora.model.checkpoint import diffusers_to_official, official_to_diffusers
from cosmos_lora.model.lora import EXTRA_TARGETS, OFFICIAL_TARGETS, LoraSpec, spec_from_state

KNOWN_TARGETS = OFFICIAL_TARGETS + tuple(t for group in EXTRA_TARGETS.values() for t in group)
DIFFUSERS_PREFIXES = ("transformer.", "base_model.model.")
COMFYUI_PREFIX = "diffusion_model."
DIFFUSERS_METADATA = "lora_adapter_metadata"
_DOWN_UP = {"lora_A.weight": "A", "lora_B.weight": "B", "lora_down.weight": "A", "lora_up.weight": "B"}


def detect(keys, metadata: dict[str, str]) -> str | None:
    """'diffusers', 'comfyui' or None, from the tensor names of a LoRA safetensors file."""
    keys = list(keys)
    if any(k.startswith(COMFYUI_PREFIX) for k in keys):
        return "comfyui"
    if any(".lora_A." in k or ".lora_B." in k for k in keys) or DIFFUSERS_METADATA in metadata:
        return "diffusers"
    return None


def from_diffusers(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source) -> tuple[dict, LoraSpec]:
    def module_of(name: str) -> str:
        for prefix in DIFFUSERS_PREFIXES:
            name = name.removeprefix(prefix)
        return name

    state, alphas = _collect(tensors, module_of, source)
    config = _diffusers_config(metadata, source)
    scale = _scale_from_config(config, _rank(state), source) if config else _scale_from_alphas(alphas, state, source)
    return state, spec_from_state(state, scale)


def from_comfyui(tensors: dict[str, torch.Tensor], source) -> tuple[dict, LoraSpec]:
    def module_of(name: str) -> str | None:
        if not name.startswith(COMFYUI_PREFIX):
            return None
        ours = official_to_diffusers("net." + name.removeprefix(COMFYUI_PREFIX) + ".weight")
        return ours.removesuffix(".weight") if ours else None

    state, alphas = _collect(tensors, module_of, source)
    return state, spec_from_state(state, _scale_from_alphas(alphas, state, source))


def to_diffusers(state: dict[str, torch.Tensor], spec: LoraSpec) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata as diffusers' `save_lora_weights` writes them for a pipeline's transformer."""
    config = {"r": spec.rank, "lora_alpha": spec.scale * spec.rank, "target_modules": spec.module_names()}
    metadata = {"format": "pt", DIFFUSERS_METADATA: json.dumps({f"transformer.{k}": v for k, v in config.items()})}
    return {f"transformer.{k}": v.contiguous() for k, v in state.items()}, metadata


def to_comfyui(state: dict[str, torch.Tensor], spec: LoraSpec) -> dict[str, torch.Tensor]:
    """Tensors as ComfyUI loads them for its Cosmos-1 model (official module names, `.alpha` per module)."""
    out = {}
    for key, tensor in state.items():
        module, _, kind = key.rpartition(".lora_")
        official = diffusers_to_official(module + ".weight").removeprefix("net.").removesuffix(".weight")
        out[f"{COMFYUI_PREFIX}{official}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor.contiguous()
        out[f"{COMFYUI_PREFIX}{official}.alpha"] = torch.tensor(spec.scale * spec.rank)
    return out


def _collect(tensors: dict[str, torch.Tensor], module_of, source) -> tuple[dict, dict[str, float]]:
    """Our `{module}.lora_{A,B}.weight` tensors and any per-module alphas; unknown names are an error."""
    state, alphas, unknown = {}, {}, []
    for name, tensor in tensors.items():
        stem, kind = _split(name)
        module = module_of(stem) if kind else None
        if module is None or not _known_target(module):
            unknown.append(name)
        elif kind == "alpha":
            alphas[module] = float(tensor.float().reshape(-1)[0])
        else:
            state[f"{module}.lora_{kind}.weight"] = tensor.float()
    if unknown:
        raise UserError(
            f"{source} has {len(unknown)} tensors cosmos-lora cannot place, e.g. {', '.join(sorted(unknown)[:3])}.",
            f"LoRA on the DiT's attention and MLP layers ({', '.join(KNOWN_TARGETS)}) is supported; "
            "remove text-encoder or other layers' tensors.",
        )
    if not state:
        raise UserError(f"{source} holds no LoRA tensors.", "check that it is a LoRA file.")
    halves = {k.rpartition(".lora_")[0] for k in state}
    unpaired = sorted(m for m in halves if not {f"{m}.lora_A.weight", f"{m}.lora_B.weight"} <= set(state))
    if unpaired:
        raise UserError(f"{source}: {unpaired[0]} has only one of its two LoRA matrices.", "export the LoRA again.")
    return state, alphas


def _split(name: str) -> tuple[str, str | None]:
    for suffix, kind in _DOWN_UP.items():
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], kind
    if name.endswith(".alpha"):
        return name.removesuffix(".alpha"), "alpha"
    return name, None


def _rank(state: dict[str, torch.Tensor]) -> int:
    """The rank of the first down matrix (`spec_from_state` checks that all agree)."""
    return next(v.shape[0] for k, v in state.items() if ".lora_A." in k)


def _known_target(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 2 and parts[0] == "transformer_blocks" and parts[1].isdigit() and ".".join(parts[2:]) in KNOWN_TARGETS


def _diffusers_config(metadata: dict[str, str], source) -> dict:
    raw = metadata.get(DIFFUSERS_METADATA)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise UserError(f"{source}: its '{DIFFUSERS_METADATA}' is not JSON ({error.msg}).", "export the LoRA again.")
    return {k.removeprefix("transformer."): v for k, v in config.items() if not k.startswith("text_encoder")}


def _scale_from_config(config: dict, rank: int, source) -> float:
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UserError(f"{source} uses per-layer ranks or alphas.", "export it with one rank and one alpha.")
    if config.get("r") not in (None, rank):
        raise UserError(f"{source}: its metadata says rank {config['r']}, its tensors have rank {rank}.", "export it again.")
    alpha = config.get("lora_alpha", rank)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _scale_from_alphas(alphas: dict[str, float], state: dict, source) -> float:
    if not alphas:
        return 1.0
    rank = _rank(state)
    values = sorted(set(alphas.values()))
    if len(values) != 1:
        raise UserError(f"{source} has different alphas per layer ({values[:4]}).", "export it with one alpha.")
    return values[0] / rank
