"""LoRA with the official cosmos-predict1 semantics, through peft.

Official (`get_fa_ca_qv_lora_config`, `cal_qkv_lora`): on `to_q` and `to_v` of self-attention (FA)
and cross-attention (CA) of the first N blocks, `q = to_q(x) + scale * up(down(x))`, down ~
N(0, 1/rank), up = 0, added before the per-head q/k RMSNorm. In peft terms that is
`init_lora_weights="gaussian"` and `lora_alpha = scale * rank` (peft scales by alpha / rank).

Our adapter file is safetensors with peft's key names (`transformer_blocks.0.attn1.to_q.lora_A.weight`)
and the spec in its metadata, so whoever loads it never has to guess rank, scale or targets.
Official LoRA keys: `net.blocks.block{N}.blocks.{0: FA, 1: CA}.block.attn.{to_q,to_k,to_v,to_out}_lora.net.{0: down, 1: up}.weight`.
The official code (`lora_attn.build_attn_lora`) has LoRA for the four attention projections only: the
`mlp` extra targets have no official name. Other formats (diffusers, ComfyUI) live in `lora_formats`.
"""

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cosmos_lora.errors import UserError
from cosmos_lora.files import publishing

if TYPE_CHECKING:
    from peft import LoraConfig

# peft is imported only where LoRA layers are added or read off a network: files and specs are read
# without it (the CLI checks adapters before any model is built).

OFFICIAL_TARGETS = ("attn1.to_q", "attn1.to_v", "attn2.to_q", "attn2.to_v")
EXTRA_TARGETS = {
    "k": ("attn1.to_k", "attn2.to_k"),
    "out": ("attn1.to_out.0", "attn2.to_out.0"),
    "mlp": ("ff.net.0.proj", "ff.net.2"),
}
ADAPTER_NAME = "default"
FORMAT = "cosmos-lora/1"


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    scale: float = 1.0  # the official multiplier: delta = scale * up(down(x))
    blocks: tuple[int, ...] = tuple(range(28))
    targets: tuple[str, ...] = OFFICIAL_TARGETS

    def module_names(self) -> list[str]:
        return [f"transformer_blocks.{b}.{t}" for b in self.blocks for t in self.targets]

    def peft_config(self) -> "LoraConfig":
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.scale * self.rank,
            init_lora_weights="gaussian",
            target_modules=self.module_names(),
            lora_dropout=0.0,
            bias="none",
        )

    def to_metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "spec": json.dumps(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "LoraSpec":
        raw = json.loads(metadata["spec"])
        return cls(rank=raw["rank"], scale=raw["scale"], blocks=tuple(raw["blocks"]), targets=tuple(raw["targets"]))


def spec_for(num_blocks: int, rank: int, scale: float, first_blocks: int | None = None, extra: tuple[str, ...] = ()) -> LoraSpec:
    """The official FA+CA q/v targets on the first `first_blocks` blocks (all by default), plus extras."""
    targets = OFFICIAL_TARGETS + tuple(t for name in extra for t in EXTRA_TARGETS[name])
    count = num_blocks if first_blocks is None else min(first_blocks, num_blocks)
    return LoraSpec(rank=rank, scale=scale, blocks=tuple(range(count)), targets=targets)


def add_lora(net: torch.nn.Module, spec: LoraSpec, seed: int | None = None) -> None:
    """Injects LoRA layers (fp32, gaussian down, zero up); only they require grad afterwards."""
    if seed is not None:
        torch.manual_seed(seed)
    net.requires_grad_(False)
    net.add_adapter(spec.peft_config(), adapter_name=ADAPTER_NAME)
    for name, param in net.named_parameters():
        if ".lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)


class AdapterSwitch:
    """Turns a network's LoRA on and off by value, so compiled blocks are not compiled again.

    peft's `disable_adapters` is a Python flag inside each LoRA layer's forward, so torch.compile
    guards on it and compiles every block once more at the first switch (an original-then-lora
    `infer --stages both` pays two compilations). Here each layer's scaling becomes a 0-dim tensor
    on the network's device, filled with its scale (on) or 0 (off): a new value, the same graph. Off,
    a layer returns `base(x) + lora(x) * 0`, which is `base(x)` exactly for finite activations.
    """

    def __init__(self, net: torch.nn.Module):
        from peft.tuners.lora import LoraLayer

        self.scales: list[tuple[torch.Tensor, float]] = []
        for module in net.modules():
            if isinstance(module, LoraLayer):
                device = next(module.parameters()).device
                for name, value in list(module.scaling.items()):
                    module.scaling[name] = torch.tensor(float(value), device=device)
                    self.scales.append((module.scaling[name], float(value)))

    def __call__(self, on: bool) -> None:
        for tensor, value in self.scales:
            tensor.fill_(value if on else 0.0)


def lora_parameters(net: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in net.named_parameters() if ".lora_" in name}


def lora_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors under peft's adapter-free names (`...to_q.lora_A.weight`), detached copies."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(net, adapter_name=ADAPTER_NAME)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def file_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors named as `lora_parameters` names them (`...to_q.lora_A.default.weight`, peft's adapter
    name inside) under the adapter file's names (`...to_q.lora_A.weight`)."""
    return {k.replace(f".{ADAPTER_NAME}.", "."): v for k, v in state.items()}


def load_lora_state(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = set(lora_state_dict(net))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise UserError(
            f"The adapter does not match the model's LoRA layers: missing {missing[:3]}, unexpected {extra[:3]}.",
            "rebuild the LoRA from the adapter's own spec (read_adapter) before loading it.",
        )
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(net, state, adapter_name=ADAPTER_NAME)
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"peft could not place {result.unexpected_keys[:3]}.", "check the adapter file.")


def save_adapter(path: Path, state: dict[str, torch.Tensor], spec: LoraSpec, extra_metadata: dict | None = None) -> None:
    """One adapter file (tensors in fp32, spec in the metadata), published through `cosmos_lora.files`."""
    metadata = spec.to_metadata() | {k: str(v) for k, v in (extra_metadata or {}).items()}
    with publishing(path) as tmp:
        save_file({k: v.float().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)


def read_adapter(path: Path) -> tuple[dict[str, torch.Tensor], LoraSpec, dict[str, str]]:
    """(tensors, spec, metadata) of one of our adapter files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No adapter file at {path}.", "check the path, or list adapters in <run>/adapters/.")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if metadata.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a cosmos-lora adapter (no '{FORMAT}' metadata).",
            "pass other LoRA formats through `cosmos-lora infer --lora`, which converts them.",
        )
    spec = LoraSpec.from_metadata(metadata)
    check_state_matches_spec(state, spec, path)
    return state, spec, metadata


def check_state_matches_spec(state: dict[str, torch.Tensor], spec: LoraSpec, source) -> None:
    expected = {f"{m}.lora_{ab}.weight" for m in spec.module_names() for ab in "AB"}
    if set(state) != expected:
        raise UserError(
            f"{source}: its tensors do not match its spec (rank {spec.rank}, {len(spec.blocks)} blocks, "
            f"targets {list(spec.targets)}): {len(expected - set(state))} missing, {len(set(state) - expected)} unexpected.",
            "the file is damaged or was edited; export it again.",
        )
    for key, tensor in state.items():
        rank = tensor.shape[0] if ".lora_A." in key else tensor.shape[1]
        if rank != spec.rank:
            raise UserError(f"{source}: {key} has rank {rank}, the spec says {spec.rank}.", "export it again.")


def stack_loras(loras: list[tuple[dict[str, torch.Tensor], LoraSpec]],
                weight_shapes: dict[str, torch.Size]) -> tuple[dict[str, torch.Tensor], LoraSpec]:
    """Several LoRAs as one of rank sum(ranks) and scale 1, so that one set of LoRA layers applies them all
    at once: down matrices stacked, up matrices side by side, each up times its own scale:

        up' @ down' = sum_i scale_i * up_i @ down_i     (`merge` adds the same to the weights)

    A weighted adapter comes with its weight in its scale (`Adapter.scaled`). A module some LoRA does not
    adapt gets zeros in that LoRA's share (the spec covers every block and target of any of them);
    `weight_shapes` (the base's weights, diffusers names) gives those zeros' sizes.
    """
    blocks = tuple(sorted({b for _, spec in loras for b in spec.blocks}))
    targets = tuple(dict.fromkeys(t for _, spec in loras for t in spec.targets))
    spec = LoraSpec(rank=sum(s.rank for _, s in loras), scale=1.0, blocks=blocks, targets=targets)
    state = {}
    for module in spec.module_names():
        out_features, in_features = weight_shapes[f"{module}.weight"]
        downs, ups = [], []
        for tensors, own in loras:
            down, up = tensors.get(f"{module}.lora_A.weight"), tensors.get(f"{module}.lora_B.weight")
            if down is None:  # this LoRA leaves the module alone
                down, up = torch.zeros(own.rank, in_features), torch.zeros(out_features, own.rank)
            downs.append(down.float())
            ups.append(up.float() * own.scale)
        state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"] = torch.cat(downs), torch.cat(ups, dim=1)
    return state, spec


# --- the official cosmos-predict1 key format ------------------------------------------------------

# our projection name -> the official LoRA module beside it (`to_out.0` is wrapped in `to_out`, so its LoRA is `to_out_lora`)
_OFFICIAL_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "to_out"}
OFFICIAL_FORMAT_TARGETS = tuple(f"attn{a}.{p}" for a in (1, 2) for p in _OFFICIAL_PROJECTIONS)
_OFFICIAL_LORA = re.compile(r"net\.blocks\.block(\d+)\.blocks\.([01])\.block\.attn\.(to_q|to_k|to_v|to_out)_lora\.net\.([01])\.weight$")
_OURS_LORA = re.compile(r"transformer_blocks\.(\d+)\.attn([12])\.(to_q|to_k|to_v|to_out\.0)\.lora_([AB])\.weight$")


def official_to_ours(key: str) -> str | None:
    if not (m := _OFFICIAL_LORA.match(key)):
        return None
    block, attn, proj, layer = m.groups()
    ours = next(o for o, official in _OFFICIAL_PROJECTIONS.items() if official == proj)
    return f"transformer_blocks.{block}.attn{int(attn) + 1}.{ours}.lora_{'AB'[int(layer)]}.weight"


def ours_to_official(key: str) -> str:
    if not (m := _OURS_LORA.match(key)):
        raise UserError(
            f"{key} has no official cosmos-predict1 LoRA name (official LoRA covers attention to_q/to_k/to_v/to_out only).",
            "export it with --merge (the LoRA merged into the weights), or as comfyui/diffusers.",
        )
    block, attn, proj, ab = m.groups()
    return f"net.blocks.block{block}.blocks.{int(attn) - 1}.block.attn.{_OFFICIAL_PROJECTIONS[proj]}_lora.net.{'AB'.index(ab)}.weight"


def check_official_targets(spec: LoraSpec, source="this adapter") -> None:
    """The official format holds attention LoRA only; anything else is refused with the targets named."""
    outside = [t for t in spec.targets if t not in OFFICIAL_FORMAT_TARGETS]
    if outside:
        raise UserError(
            f"The official cosmos-predict1 LoRA format cannot hold {source}'s {', '.join(outside)} LoRA "
            "(official LoRA exists for the attention projections to_q, to_k, to_v and to_out only).",
            "export with --merge (every target merged into the weights), or use --format comfyui or diffusers.",
        )


def from_official(checkpoint: dict, scale: float, source="checkpoint") -> tuple[dict[str, torch.Tensor], LoraSpec]:
    """LoRA tensors of an official flat or post-trained (`{"model", "ema"}`) checkpoint, EMA preferred.

    Official files do not store the scale (it lives in the experiment config), so it is given.
    """
    flat = checkpoint["model"] if isinstance(checkpoint.get("model"), dict) else checkpoint
    ema = {k.replace("-", "."): v for k, v in (checkpoint.get("ema") or {}).items()}
    state = {}
    for key, tensor in flat.items():
        if (ours := official_to_ours(key)) is not None:
            state[ours] = ema.get(key, tensor).float()
    if not state:
        raise UserError(
            f"{source} holds no official LoRA tensors (`...attn.to_q_lora.net.0.weight`).",
            "pass a LoRA post-trained checkpoint (official `iter_*.pt` or `cosmos-lora export --format official`); "
            "a released base model.pt has no LoRA, and a merged one has it inside the weights already.",
        )
    return state, spec_from_state(state, scale)


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tensors under the official LoRA names, unchanged (see `lora_formats.to_official_inference` for
    the form the official inference script applies)."""
    return {ours_to_official(k): v for k, v in state.items()}


def spec_from_state(state: dict[str, torch.Tensor], scale: float) -> LoraSpec:
    """Rank, blocks and targets read off peft-named tensors."""
    pattern = re.compile(r"transformer_blocks\.(\d+)\.(.+)\.lora_A\.weight$")
    found = [pattern.match(k).groups() for k in state if pattern.match(k)]
    ranks = {state[k].shape[0] for k in state if ".lora_A." in k}
    if len(ranks) != 1:
        raise UserError(f"LoRA tensors with mixed ranks {sorted(ranks)} are not supported.")
    blocks = tuple(sorted({int(b) for b, _ in found}))
    targets = tuple(t for t in OFFICIAL_TARGETS + sum(EXTRA_TARGETS.values(), ()) if any(t == f for _, f in found))
    spec = LoraSpec(rank=ranks.pop(), scale=scale, blocks=blocks, targets=targets)
    check_state_matches_spec(state, spec, "LoRA tensors")
    return spec


def adapter_summary(spec: LoraSpec) -> str:
    return f"rank {spec.rank}, scale {spec.scale:g}, blocks {block_ranges(spec.blocks)}, targets {', '.join(spec.targets)}"


def block_ranges(blocks) -> str:
    """(0, 1, 2, 3, 7, 9, 10) -> '0-3, 7, 9-10'."""
    runs: list[list[int]] = []
    for block in sorted(set(blocks)):
        if runs and block == runs[-1][1] + 1:
            runs[-1][1] = block
        else:
            runs.append([block, block])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"

