"""LoRA files of other tools <-> our peft-named tensors: diffusers, ComfyUI and the official cosmos-predict1 layout.

    diffusers / peft  [transformer.]transformer_blocks.0.attn1.to_q.lora_A.weight, .lora_B.weight
                      scale = lora_alpha / r from the `lora_adapter_metadata` JSON, else 1
    ComfyUI           diffusion_model.blocks.block0.blocks.0.block.attn.to_q.0.lora_down.weight, .lora_up.weight
                      (official module names), optional `.alpha`: scale = alpha / rank, else 1
    official          net.blocks.block0.blocks.0.block.attn.to_q_lora.net.0.weight: key map in `lora`,
                      the form official inference applies in `to_official_inference`

ComfyUI's generic loader (`comfy/lora.py: model_lora_keys_unet`) maps `diffusion_model.<module>` to
`diffusion_model.<module>.weight` of any model, and its Cosmos-1 network keeps the official module names
(`to_q.0`, `to_out.0`, `layer1`); `lora_up`/`lora_down` + `alpha` is the spelling every ComfyUI version reads.
diffusers' `load_lora_adapter(prefix="transformer")` strips `transformer.` and builds its `LoraConfig` from the
`lora_adapter_metadata` JSON when present, as `save_lora_weights` writes it.

Whatever the format, an import is checked the same way: one rank, the same (block, target) grid
everywhere, targets among those `cosmos_lora.model.lora` knows.
"""

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from cosmos_lora.errors import UserError
from cosmos_lora.model.checkpoint import diffusers_to_official, official_to_diffusers
from cosmos_lora.model.lora import (
    EXTRA_TARGETS, OFFICIAL_TARGETS, LoraSpec, block_ranges, check_official_targets, ours_to_official, spec_from_state,
)
from cosmos_lora.files import publishing

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


def to_diffusers(
    state: dict[str, torch.Tensor], spec: LoraSpec, fold_scale: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata as diffusers' `save_lora_weights` writes them for a pipeline's transformer.

    `fold_scale` puts the scale into the up matrices and writes lora_alpha = r: the file then means the same
    to every loader, also to `transformer.load_lora_adapter(file)`, which reads the metadata (and so the
    alpha) only when given `use_safetensors=True` or `weight_name` and otherwise assumes alpha = r.
    """
    scale = spec.scale if fold_scale else 1.0
    config = {"r": spec.rank, "lora_alpha": spec.rank if fold_scale else spec.scale * spec.rank, "target_modules": spec.module_names()}
    metadata = {"format": "pt", DIFFUSERS_METADATA: json.dumps({f"transformer.{k}": v for k, v in config.items()})}
    tensors = {f"transformer.{k}": (v * scale if ".lora_B." in k and scale != 1 else v).contiguous() for k, v in state.items()}
    return tensors, metadata


def to_comfyui(state: dict[str, torch.Tensor], spec: LoraSpec) -> dict[str, torch.Tensor]:
    """Tensors as ComfyUI loads them for its Cosmos-1 model (official module names, `.alpha` per module)."""
    out = {}
    for key, tensor in state.items():
        module, _, kind = key.rpartition(".lora_")
        official = diffusers_to_official(module + ".weight").removeprefix("net.").removesuffix(".weight")
        out[f"{COMFYUI_PREFIX}{official}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor.contiguous()
        out[f"{COMFYUI_PREFIX}{official}.alpha"] = torch.tensor(spec.scale * spec.rank)
    return out


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomic write (temporary file, then rename)."""
    with publishing(Path(path)) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


# --- what the official LoRA inference applies ------------------------------------------------------
# `Cosmos-Predict1-7B-Text2World_post-trained-lora` runs the experiment `Cosmos_Predict1_Text2World_7B_Post_trained_lora`:
# get_fa_ca_qv_lora_config(first_nblocks=27, rank=8, scale=1). Its loader (`load_network_model`) is non-strict: a
# tensor of another shape is dropped and a key without a layer is ignored, both silently.
OFFICIAL_INFERENCE_RANK = 8
OFFICIAL_INFERENCE_BLOCKS = 27


def to_official_inference(state: dict[str, torch.Tensor], spec: LoraSpec) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The adapter under official names, in the form official LoRA inference applies, and what it would ignore.

    The scale goes into the up matrices (that inference uses scale 1) and a rank below 8 is zero-padded to 8
    (its layers are rank 8): the delta `scale * up @ down` is unchanged. A rank above 8 would be dropped
    there without a word, so it is refused.
    """
    check_official_targets(spec)
    if spec.rank > OFFICIAL_INFERENCE_RANK:
        raise UserError(
            f"This adapter has rank {spec.rank}; official LoRA inference (Cosmos_Predict1_Text2World_7B_Post_trained_lora) "
            f"builds rank-{OFFICIAL_INFERENCE_RANK} layers and would silently skip it.",
            "export with --merge: the LoRA merged into the weights needs no LoRA support and keeps every rank.",
        )
    pad = OFFICIAL_INFERENCE_RANK - spec.rank
    official = {}
    for key, tensor in state.items():
        tensor = tensor.float()
        if ".lora_A." in key:
            tensor = torch.cat([tensor, tensor.new_zeros(pad, tensor.shape[1])]) if pad else tensor
        else:
            tensor = tensor * spec.scale if spec.scale != 1 else tensor
            tensor = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], pad)], dim=1) if pad else tensor
        official[ours_to_official(key)] = tensor.contiguous()
    ignored = []
    if late := [b for b in spec.blocks if b >= OFFICIAL_INFERENCE_BLOCKS]:
        ignored.append(f"block {block_ranges(late)}")
    if extra := [t for t in spec.targets if t not in OFFICIAL_TARGETS]:
        ignored.append(", ".join(extra))
    return official, ignored


# The folder names the official text2world.py accepts (`--diffusion_transformer_dir` has fixed choices).
OFFICIAL_DIRS = {
    ("7b", "lora"): "Cosmos-Predict1-7B-Text2World_post-trained-lora",
    ("7b", "merged"): "Cosmos-Predict1-7B-Text2World_post-trained",
    ("14b", "merged"): "Cosmos-Predict1-14B-Text2World_post-trained",
}


def official_inference_command(model_pt: Path, kind: str, size: str = "7b") -> list[str]:
    """Lines to run the official text2world.py on `model_pt` (`kind`: lora or merged), from the cosmos-predict1 root.

    The file must be `<checkpoint_dir>/<official folder>/model.pt`, beside the tokenizer and T5 folders.
    """
    folder = OFFICIAL_DIRS.get((size, kind), OFFICIAL_DIRS[("7b", kind)])
    model_pt = Path(model_pt).resolve()
    lines = []
    if model_pt.parent.name == folder and model_pt.name == "model.pt":
        checkpoint_dir = str(model_pt.parent.parent)
    else:
        checkpoint_dir = "checkpoints"
        lines.append(f"mkdir -p {checkpoint_dir}/{folder} && mv {model_pt} {checkpoint_dir}/{folder}/model.pt")
    lines.append(
        "PYTHONPATH=$(pwd) python cosmos_predict1/diffusion/inference/text2world.py "
        f"--checkpoint_dir {checkpoint_dir} --diffusion_transformer_dir {folder} "
        '--prompt "<your prompt>" --video_save_name lora --disable_guardrail --disable_prompt_upsampler'
    )
    return lines


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
