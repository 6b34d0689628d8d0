"""The network as training and generation run it, assembled in one fixed order by `build_network`:

  1. the official DiT, built on the meta device and given the checkpoint's tensors;
  2. LoRA: new layers to train (fp32, seeded gaussian down, zero up), or adapters' layers to sample
     with (their own specs and weights, stacked into one set of layers, frozen in the network's precision);
  3. FP8 linears (optional): after the LoRA, which then wraps the FP8 base as it wraps the bf16 one;
  4. how the blocks run (activation checkpointing, compile, cuDNN attention): wrappers of the block
     instances' `forward`, so module names (LoRA and checkpoint keys) stay those of steps 1 and 2.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from cosmos_lora.model.adapter_files import Adapter, check_fits
from cosmos_lora.model.checkpoint import load_official_dit
from cosmos_lora.model.dit import CosmosDiT, configure_blocks
from cosmos_lora.model.edm import LogVarHead
from cosmos_lora.model.fp8 import use_fp8_linears
from cosmos_lora.model.lora import LoraSpec, add_lora, load_lora_state, lora_parameters, spec_for, stack_loras


@dataclass(frozen=True)
class BlockSettings:
    """The speed/memory choices of `configure_blocks`."""

    recompute_fraction: float = 0.0  # activation checkpointing of the first fraction of the blocks
    keep_self_attention: bool = True  # recomputed blocks keep their self-attention output
    keep_attention_blocks: int | None = None  # only the first N recomputed blocks keep it (None: all)
    compile: bool = False  # regional torch.compile of the blocks; only ever on GPUs
    prefer_cudnn: bool = True  # cuDNN's fused attention on GPUs


@dataclass(frozen=True)
class NewLora:
    """LoRA layers to train: the official FA+CA q/v targets (plus extras) on the first `first_blocks` blocks."""

    rank: int
    scale: float
    first_blocks: int | None = None  # all blocks
    extra_targets: tuple[str, ...] = ()
    seed: int | None = None  # seeds the gaussian init of the down matrices


class Network(NamedTuple):
    net: CosmosDiT
    logvar: LogVarHead  # the loss's uncertainty head (training only)
    spec: LoraSpec | None  # the LoRA attached, if any
    recomputed_blocks: int  # blocks recomputed in backward


def build_network(
    dit: Path,
    device: torch.device,
    dtype: torch.dtype,
    lora: NewLora | Adapter | list[Adapter] | None = None,
    fp8: bool = False,
    blocks: BlockSettings = BlockSettings(),
) -> Network:
    """The DiT at `dit` in `dtype` on `device`, with `lora`: new layers to train, or adapters to sample with
    (several are applied together, each at its own scale: `Adapter.scaled` carries a weight)."""
    device = torch.device(device)
    net, logvar = load_official_dit(dit, device=device, dtype=dtype)
    spec = None
    if isinstance(lora, NewLora):
        spec = spec_for(len(net.transformer_blocks), lora.rank, lora.scale, lora.first_blocks, lora.extra_targets)
        add_lora(net, spec, seed=lora.seed)
    elif lora:
        spec = _attach_adapters(net, [lora] if isinstance(lora, Adapter) else lora, dtype, dit)
    if fp8:
        use_fp8_linears(net)
    recomputed = configure_blocks(
        net, blocks.recompute_fraction, keep_self_attention=blocks.keep_self_attention,
        compile_blocks=blocks.compile and device.type == "cuda", prefer_cudnn=blocks.prefer_cudnn,
        keep_attention_blocks=blocks.keep_attention_blocks,
    )
    return Network(net, logvar, spec, recomputed)


def _attach_adapters(net: CosmosDiT, adapters: list[Adapter], dtype: torch.dtype, dit: Path) -> LoraSpec:
    """LoRA layers built from the adapters' own specs (one adapter as it is, several stacked into one:
    `stack_loras`), then their weights, frozen in the network's precision."""
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    for adapter in adapters:
        check_fits(adapter, shapes, dit)
    if len(adapters) == 1:
        state, spec = adapters[0].state, adapters[0].spec
    else:
        state, spec = stack_loras([(a.state, a.spec) for a in adapters], shapes)
    add_lora(net, spec)
    load_lora_state(net, state)
    for param in lora_parameters(net).values():
        param.data = param.data.to(dtype)
        param.requires_grad_(False)
    return spec
