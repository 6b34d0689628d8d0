"""LoRA files of other tools <-> our peft-named tensors: diffusers, ComfyUI and the official cosmos-predict1 layout.

    diffusers / peft  [transformer.|base_model.model.]transformer_blocks.0.attn1.to_q.lora_A.weight, .lora_B.weight
                      scale = lora_alpha / r from the `lora_adapter_metadata` JSON, or from the
                      `adapter_config.json` PEFT's `save_pretrained` writes beside `adapter_model.safetensors`
                      (with its per-module `rank_pattern` / `alpha_pattern`), or from `.alpha` tensors;
                      a file recording none of these has no knowable scale and needs `--lora-scale`
    ComfyUI           diffusion_model.blocks.block0.blocks.0.block.attn.to_q.0.lora_down.weight, .lora_up.weight
                      (official module names), optional `.alpha`: scale = alpha / rank, else 1 (as ComfyUI applies it)
    official          net.blocks.block0.blocks.0.block.attn.to_q_lora.net.0.weight: key map in `lora`,
                      the form official inference applies in `to_official_inference`

ComfyUI's generic loader (`comfy/lora.py: model_lora_keys_unet`) maps `diffusion_model.<module>` to
`diffusion_model.<module>.weight` of any model, and its Cosmos-1 network keeps the official module names
(`to_q.0`, `to_out.0`, `layer1`); `lora_up`/`lora_down` + `alpha` is the spelling every ComfyUI version reads.
diffusers' `load_lora_adapter(prefix="transformer")` strips `transformer.` and builds its `LoraConfig` from the
`lora_adapter_metadata` JSON when present, as `save_lora_weights` writes it.

Whatever the format, an import is checked the same way: the same (block, target) grid everywhere,
targets among those `cosmos_lora.model.lora` knows, finite numbers. Where ranks or scales differ per
module, each module's scale is folded into its up matrix and ranks are zero-padded to the largest:
every delta `scale * up @ down` is unchanged, and the adapter has one rank and scale 1.
"""

import json
import math
import re
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
PEFT_FILE, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"  # what PEFT's save_pretrained writes
STATED = "--lora-scale (the file records none)"  # the origin of a scale the user gave
SCALE_FIX = (
    "give the scale it was trained with (lora_alpha / r; 1 when trained without alpha): "
    "`infer --lora FILE:S` (or --lora-scale S), `merge -a FILE:S`; or keep PEFT's adapter_config.json beside it as adapter_model.safetensors."
)
_DOWN_UP = {"lora_A.weight": "A", "lora_B.weight": "B", "lora_down.weight": "A", "lora_up.weight": "B"}


def detect(keys, metadata: dict[str, str]) -> str | None:
    """'diffusers', 'comfyui' or None, from the tensor names of a LoRA safetensors file."""
    keys = list(keys)
    if any(k.startswith(COMFYUI_PREFIX) for k in keys):
        return "comfyui"
    if any(".lora_A." in k or ".lora_B." in k for k in keys) or DIFFUSERS_METADATA in metadata:
        return "diffusers"
    return None


def from_diffusers(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: Path, stated_scale: float | None = None
) -> tuple[dict, LoraSpec, str]:
    """Our tensors, their spec and where the scale came from. `stated_scale` is taken only when the file
    records no scale (no metadata, no adapter_config.json beside it, no `.alpha` tensors)."""
    def module_of(name: str) -> str:
        for prefix in DIFFUSERS_PREFIXES:
            name = name.removeprefix(prefix)
        return name

    state, alphas = _collect(tensors, module_of, source)
    configs = [(f"{source}'s metadata", _diffusers_config(metadata, source)), *peft_config_beside(Path(source))]
    found = [(where, module_scales(config, state, where)) for where, config in configs if config]
    if len({tuple(sorted(scales.items())) for _, scales in found}) > 1:
        (first, a), (second, b) = found[:2]
        module = next(m for m in a if a[m] != b[m])
        raise UserError(f"{first} gives {module} scale {a[module]:g}, {second} gives {b[module]:g}.", "keep only the right one.")
    if found:
        return _with_scales(state, found[0][1], f"lora_alpha / r from {found[0][0]}")
    if alphas:
        return _with_scales(state, _alpha_scales(alphas, state), ".alpha tensors")
    if stated_scale is None:
        raise UserError(f"{source} does not record its LoRA scale (no lora_alpha anywhere).", SCALE_FIX)
    return _with_scales(state, dict.fromkeys(_ranks(state), stated_scale), STATED)


def from_comfyui(tensors: dict[str, torch.Tensor], source) -> tuple[dict, LoraSpec, str]:
    def module_of(name: str) -> str | None:
        if not name.startswith(COMFYUI_PREFIX):
            return None
        ours = official_to_diffusers("net." + name.removeprefix(COMFYUI_PREFIX) + ".weight")
        return ours.removesuffix(".weight") if ours else None

    state, alphas = _collect(tensors, module_of, source)
    # ComfyUI's loader applies alpha / rank, and 1 to a module without `.alpha`
    return _with_scales(state, _alpha_scales(alphas, state), ".alpha tensors" if alphas else "1 (no .alpha: as ComfyUI applies it)")


def peft_config_beside(path: Path) -> list[tuple[str, dict]]:
    """[(where, config)] of the adapter_config.json beside a PEFT `adapter_model.safetensors`, or []."""
    config_path = path.with_name(PEFT_CONFIG)
    if path.name != PEFT_FILE or not config_path.is_file():
        return []
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{config_path} is not JSON ({error}).", "save the adapter again with PEFT's save_pretrained.") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not a PEFT adapter config.", "save the adapter again with PEFT's save_pretrained.")
    return [(str(config_path), config)]


def module_scales(config: dict, state: dict[str, torch.Tensor], where: str) -> dict[str, float]:
    """Each module's scale as PEFT computes it: lora_alpha / r (rslora: / sqrt(r)), per-module values from
    `rank_pattern` / `alpha_pattern` (keys matched as PEFT matches them: the module name or a dotted suffix)."""
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    scales = {}
    for module, rank in _ranks(state).items():
        configured = _pattern_value(rank_pattern, module, config.get("r"))
        if configured not in (None, rank):
            raise UserError(f"{where} says rank {configured} for {module}, its tensors have rank {rank}.", "export the LoRA again.")
        alpha = _pattern_value(alpha_pattern, module, config.get("lora_alpha", rank))
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise UserError(f"{where}: lora_alpha {alpha!r} for {module} is not a number.", "export the LoRA again.")
        scales[module] = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return scales


def check_finite(state: dict[str, torch.Tensor], source) -> None:
    """A LoRA holding NaN or inf would turn every video it touches black: refused when it is read."""
    for key, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise UserError(
                f"{source} holds non-finite numbers (NaN or inf) in {key}.",
                "use an earlier adapter of the run (--step) or export it again; training with a lower lr avoids this.",
            )
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
    """Published through `cosmos_lora.files` (atomic, mode from the umask)."""
    with publishing(path) as tmp:
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
            f"This adapter has rank {spec.rank}; official LoRA inference (Cosmos_Predict1_*_7B_Post_trained_lora) "
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


# The folder names the official text2world.py / video2world.py accept (`--diffusion_transformer_dir` has fixed
# choices). Video2World LoRA inference (`Cosmos_Predict1_Video2World_7B_Post_trained_lora`) is built like
# Text2World's: rank 8, scale 1, blocks 0-26 only (REFERENCE-video2world.md §2.7).
OFFICIAL_DIRS = {
    ("7b", "lora"): "Cosmos-Predict1-7B-Text2World_post-trained-lora",
    ("7b", "merged"): "Cosmos-Predict1-7B-Text2World_post-trained",
    ("14b", "merged"): "Cosmos-Predict1-14B-Text2World_post-trained",
    ("7b-v2w", "lora"): "Cosmos-Predict1-7B-Video2World_post-trained-lora",
    ("7b-v2w", "merged"): "Cosmos-Predict1-7B-Video2World_post-trained",
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
    script, given = "text2world.py", ""
    if size == "7b-v2w":  # the image or video to continue, and how many of its last frames
        script, given = "video2world.py", "--input_image_or_video_path <image or video> --num_input_frames 1 "
    lines.append(
        f"PYTHONPATH=$(pwd) python cosmos_predict1/diffusion/inference/{script} "
        f"--checkpoint_dir {checkpoint_dir} --diffusion_transformer_dir {folder} {given}"
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


def _ranks(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Each module's rank (the rows of its down matrix)."""
    return {k.removesuffix(".lora_A.weight"): v.shape[0] for k, v in state.items() if k.endswith(".lora_A.weight")}


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's `get_pattern_key`: the first key that is the module name or a dotted suffix of it."""
    for key, value in patterns.items():
        for prefix in DIFFUSERS_PREFIXES:
            key = key.removeprefix(prefix)
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error as error:
            raise UserError(f"The LoRA config's pattern {key!r} is not a regular expression ({error}).", "fix or remove it.") from None
    return default


def _alpha_scales(alphas: dict[str, float], state: dict) -> dict[str, float]:
    """alpha / rank per module; 1 where a module has no alpha."""
    return {module: alphas[module] / rank if module in alphas else 1.0 for module, rank in _ranks(state).items()}


def _with_scales(state: dict[str, torch.Tensor], scales: dict[str, float], origin: str) -> tuple[dict, LoraSpec, str]:
    """One scale for all: the spec carries it. Scales or ranks differing per module: each scale folded into
    its up matrix, ranks zero-padded to the largest (every delta unchanged), scale 1."""
    if bad := next((m for m, scale in scales.items() if not math.isfinite(scale)), None):
        raise UserError(f"The LoRA's scale for {bad} is {scales[bad]} ({origin}).", "export the LoRA again with a finite alpha.")
    ranks = _ranks(state)
    if len(set(scales.values())) == 1 and len(set(ranks.values())) == 1:
        return state, spec_from_state(state, next(iter(scales.values()))), origin
    rank = max(ranks.values())
    folded = {}
    for module, scale in scales.items():
        down, up = state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"] * scale
        pad = rank - down.shape[0]
        folded[f"{module}.lora_A.weight"] = torch.cat([down, down.new_zeros(pad, down.shape[1])]) if pad else down
        folded[f"{module}.lora_B.weight"] = torch.cat([up, up.new_zeros(up.shape[0], pad)], dim=1) if pad else up
    low, high = min(scales.values()), max(scales.values())
    where = f"{origin}, per module ({low:g} to {high:g}) folded into the up matrices"
    return folded, spec_from_state(folded, 1.0), where + (f", ranks padded to {rank}" if len(set(ranks.values())) > 1 else "")
