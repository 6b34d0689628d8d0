"""LoRA files, whatever tool wrote them, as one `Adapter`: tensors under peft's names plus their spec.

`from_file` takes our `.safetensors`, a diffusers/peft or ComfyUI export (`lora_formats`), or an
official cosmos-predict1 checkpoint (`.pt`, flat or `{"model", "ema"}`) whose LoRA tensors are
extracted. The adapter's rank, scale, blocks and targets always come from the file itself;
`check_fits` compares them with the base model before any weights are loaded.

The LoRA tensors of a Text2World and a Video2World adapter have the same shapes, so which model an
adapter was trained on is known only where the file says it: our adapters record it, an official
post-trained checkpoint holds its whole network (the patch embedding's width tells). Exports to
other formats do not carry it.
"""

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from cosmos_lora.errors import UserError, load_failure
from cosmos_lora.model import lora_formats
from cosmos_lora.model.sizes import LATENT_CHANNELS, PATCH_VOLUME
from cosmos_lora.model.lora import FORMAT, LoraSpec, adapter_summary, from_official, read_adapter

OFFICIAL_SUFFIXES = (".pt", ".pth", ".ckpt")
VIDEO2WORLD_FEATURES = (LATENT_CHANNELS + 2) * PATCH_VOLUME  # the patch embedding's input: 72 (Text2World: 68)


@dataclass
class Adapter:
    state: dict[str, torch.Tensor]
    spec: LoraSpec
    source: Path
    format: str = "cosmos-lora"  # cosmos-lora, diffusers, comfyui or official
    step: int | None = None
    ema: bool = False
    scale_origin: str = "the file's metadata"  # where spec.scale comes from (lora_formats)
    video2world: bool | None = None  # trained on a Video2World model; None: the file does not say

    @functools.cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def describe(self, lora_scale: float = 1.0) -> dict:
        return {
            "adapter": str(self.source), "adapter_format": self.format, "adapter_sha256": self.sha256,
            "adapter_step": self.step, "adapter_ema": self.ema, "lora_rank": self.spec.rank,
            "lora_trained_scale": self.spec.scale, "lora_scale_multiplier": lora_scale, "lora_scale": self.spec.scale * lora_scale,
            "lora_scale_origin": self.scale_origin,
            "lora_blocks": list(self.spec.blocks), "lora_targets": list(self.spec.targets),
        }

    def scaled(self, multiplier: float) -> "Adapter":
        """The same adapter applied at `multiplier` times its trained scale (`--lora-scale`)."""
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, scale=self.spec.scale * multiplier))

    def summary(self) -> str:
        what = f"step {self.step}" + (" (EMA)" if self.ema else "") if self.step is not None else f"{self.format} file"
        return f"{self.source} [{what}]: {adapter_summary(self.spec)}"


def from_file(path: Path, scale: float | None = None) -> Adapter:
    """Any supported LoRA file (or PEFT's save_pretrained folder), refused if it holds NaN or inf. `scale`:
    the scale the user stated for a file that records none (official ones are applied at 1 like official inference)."""
    path = Path(path)
    path = path / lora_formats.PEFT_FILE if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"No LoRA file at {path}.", "check the path given to --lora.")
    adapter = _from_file(path, scale)
    lora_formats.check_finite(adapter.state, path)
    return adapter


def _from_file(path: Path, scale: float | None) -> Adapter:
    if path.suffix == ".safetensors":
        return _from_safetensors(path, scale)
    if path.suffix in OFFICIAL_SUFFIXES:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # a truncated download, or not a PyTorch checkpoint
            raise UserError(f"{path} is not a readable PyTorch checkpoint ({load_failure(error)}).",
                            "download or export it again.") from None
        if not isinstance(checkpoint, dict):
            raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a state dict.", "pass an official cosmos-predict1 checkpoint.")
        # the official LoRA example trains with scale 1; `--lora-scale` sets another
        state, spec = from_official(checkpoint, scale=1.0 if scale is None else scale, source=path)
        return Adapter(state, spec, path, "official", scale_origin="1, as official LoRA inference applies it",
                       video2world=_official_variant(checkpoint))
    raise UserError(
        f"{path} is not a LoRA file cosmos-lora reads.",
        f"pass a .safetensors adapter (ours, diffusers or ComfyUI) or an official checkpoint ({', '.join(OFFICIAL_SUFFIXES)}).",
    )


def _from_safetensors(path: Path, scale: float | None = None) -> Adapter:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys} if metadata.get("format") != FORMAT else None
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path} is not a readable safetensors file ({error}).", "download or export it again.") from None
    if metadata.get("format") == FORMAT:
        state, spec, metadata = read_adapter(path)
        step = int(metadata["step"]) if "step" in metadata else None
        variant = {"True": True, "False": False}.get(metadata.get("video2world"))  # adapters saved before the key: None
        return Adapter(state, spec, path, "cosmos-lora", step, metadata.get("ema") == "True", video2world=variant)
    kind = lora_formats.detect(keys, metadata)
    if kind == "comfyui":
        state, spec, origin = lora_formats.from_comfyui(tensors, path)
    elif kind == "diffusers":
        state, spec, origin = lora_formats.from_diffusers(tensors, metadata, path, scale)
    else:
        raise UserError(
            f"{path} is not a LoRA format cosmos-lora knows (tensors like {', '.join(keys[:2]) or 'none'}).",
            "pass our adapter, a diffusers/peft export (…lora_A.weight) or a ComfyUI one (diffusion_model.…lora_up.weight).",
        )
    return Adapter(state, spec, path, kind, scale_origin=origin)


FITS_FIX = "use the base model the LoRA was trained on (--run uses the run's own model; --model picks 7b or tiny)."


def _official_variant(checkpoint: dict) -> bool | None:
    state = checkpoint.get("model") if isinstance(checkpoint.get("model"), dict) else checkpoint
    embedding = state.get("net.x_embedder.proj.1.weight")
    return None if embedding is None else embedding.shape[1] == VIDEO2WORLD_FEATURES


def check_fits(adapter: Adapter, weight_shapes: dict[str, torch.Size], dit: Path, fix: str = FITS_FIX) -> None:
    """The adapter was trained on this kind of model (where it says), its blocks exist in the base model
    and its matrices fit the layers they adapt.

    `weight_shapes`: the base network's weights in diffusers names (`transformer_blocks.0.attn1.to_q.weight`).
    """
    base_video2world = weight_shapes["patch_embed.proj.weight"][1] == VIDEO2WORLD_FEATURES
    if adapter.video2world is not None and adapter.video2world != base_video2world:
        trained, base = ("Video2World", "Text2World") if adapter.video2world else ("Text2World", "Video2World")
        raise UserError(
            f"{adapter.source} is a {trained} LoRA; the base model {dit} is {base}.",
            f"use a {trained} base model (--model {'7b-v2w' if adapter.video2world else '7b'}, or the run's own), "
            f"or a LoRA trained on the {base} model.",
        )
    spec = adapter.spec
    blocks = 1 + max((int(k.split(".")[1]) for k in weight_shapes if k.startswith("transformer_blocks.")), default=-1)
    if max(spec.blocks) >= blocks:
        raise UserError(f"{adapter.source} has LoRA for block {max(spec.blocks)}, the base model {dit} has {blocks} blocks.", fix)
    for module in spec.module_names():
        out_features, in_features = weight_shapes[f"{module}.weight"]
        down, up = adapter.state[f"{module}.lora_A.weight"], adapter.state[f"{module}.lora_B.weight"]
        if down.shape[1] != in_features or up.shape[0] != out_features:
            raise UserError(
                f"{adapter.source} does not fit the base model {dit}: its {module} LoRA maps {down.shape[1]} -> "
                f"{up.shape[0]} features, the layer maps {in_features} -> {out_features}.",
                fix,
            )
