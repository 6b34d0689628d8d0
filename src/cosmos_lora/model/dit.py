"""The Cosmos-Predict1 DiT ("GeneralDIT", blocks FA-CA-MLP) as diffusers' `CosmosTransformer3DModel`.

The official network and diffusers' re-implementation compute the same function once three
details are aligned (measured against the official code in `shared/fixtures/cosmos_predict1`):

1. q/k RMSNorm eps is 1e-6 in the official code (TransformerEngine), 1e-5 in diffusers.
2. The padding mask is resized to the latent size with NEAREST and concatenated as a 17th input
   channel. diffusers does this with torchvision and only for a `[1, 1, H, W]` mask; we build the
   channel ourselves (any batch size, no torchvision) and hand it in as `condition_mask`.
3. The official network takes fps as a tensor and uses `fps[:1]`; diffusers takes a number.

Video2World (`VideoExtendGeneralDIT`) is the same network with one more input channel: the condition
mask (1 on the latent frames given as condition), concatenated before the padding mask, so the patch
embedding takes 18·1·2·2 = 72 features instead of 68 (shared/REFERENCE-video2world.md §1.2). Whether
a checkpoint is one is read off that layer's width, never from a flag (`sizes.size_from_state_dict`).

The sizes (`DIT_SIZES`, with `tiny`, `tiny14b` and `tiny-v2w` at test scale) live in `model/sizes.py`,
which needs no diffusers.
"""

import functools
from dataclasses import asdict

import torch
import torch.nn.functional as F
from diffusers import CosmosTransformer3DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from cosmos_lora.model.sizes import DIT_SIZES, LATENT_CHANNELS, PATCH_SIZE, DiTSize

QK_NORM_EPS = 1e-6


class CosmosDiT(CosmosTransformer3DModel):
    """`CosmosTransformer3DModel` called the way the official GeneralDIT is called.

    Build it with `build_dit(size)`. `forward` takes the official arguments; LoRA (peft) and
    checkpoint loading address the diffusers module names (`transformer_blocks.N.attn1.to_q`, ...).
    """

    def forward(
        self,
        x: torch.Tensor,  # [B, 16, T, H, W], already scaled by c_in(sigma)
        timesteps: torch.Tensor,  # [B] or [] c_noise = 0.25 ln(sigma)
        crossattn_emb: torch.Tensor,  # [B, L, D_text]
        fps: torch.Tensor | float = 24.0,
        padding_mask: torch.Tensor | None = None,  # [B or 1, 1, H_px, W_px]; zeros when None
        condition_mask: torch.Tensor | None = None,  # Video2World only: [B or 1, 1, T, H, W]; zeros (no condition) when None
    ) -> torch.Tensor:
        batch, _, frames, height, width = x.shape
        if padding_mask is None:
            mask = x.new_zeros(batch, 1, frames, height, width)
        else:
            mask = F.interpolate(padding_mask.float(), size=(height, width), mode="nearest").to(x.dtype)
            mask = mask.unsqueeze(2).expand(batch, 1, frames, height, width)
        if self.video2world:  # official order: [latents, condition mask, padding mask]
            if condition_mask is None:
                condition_mask = x.new_zeros(batch, 1, frames, height, width)
            mask = torch.cat([condition_mask.to(x.dtype).expand(batch, 1, frames, height, width), mask], dim=1)
        elif condition_mask is not None:
            raise ValueError("a condition mask was given to a Text2World DiT (it has no condition-mask input channel)")
        if isinstance(fps, torch.Tensor):
            fps = float(fps.reshape(-1)[0])  # NOTE: the official network also uses only fps[:1]
        timesteps = timesteps.reshape(-1).expand(batch)
        return super().forward(
            hidden_states=x,
            timestep=timesteps,
            encoder_hidden_states=crossattn_emb,
            fps=fps,
            condition_mask=mask,
            return_dict=False,
        )[0]

    @property
    def video2world(self) -> bool:
        """The network takes a condition-mask channel (Video2World)."""
        return self.config.in_channels == LATENT_CHANNELS + 2


def build_dit(size: DiTSize | str, device: torch.device | str | None = None) -> CosmosDiT:
    """A randomly initialised DiT; on device 'meta' it allocates nothing (for loading)."""
    size = DIT_SIZES[size] if isinstance(size, str) else size
    kwargs = asdict(size)
    kwargs.pop("video2world")
    with torch.device(device or "cpu"):
        net = CosmosDiT(
            in_channels=size.input_channels,  # latents + the mask channels we concatenate ourselves
            out_channels=LATENT_CHANNELS,
            mlp_ratio=4.0,
            patch_size=PATCH_SIZE,
            concat_padding_mask=False,
            extra_pos_embed_type="learnable",
            **kwargs,
        )
    for block in net.transformer_blocks:
        for attn in (block.attn1, block.attn2):
            attn.norm_q.eps = attn.norm_k.eps = QK_NORM_EPS
    return net


# Attention ops whose outputs selective recomputation keeps (the rest of a block is recomputed).
_ATTENTION_OPS = {
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}
_PREFERRED_ATTENTION = [
    SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH,
]


def configure_blocks(
    net: CosmosDiT,
    recompute_fraction: float = 0.0,
    keep_self_attention: bool = True,
    compile_blocks: bool = False,
    prefer_cudnn: bool = True,
    keep_attention_blocks: int | None = None,
) -> int:
    """How each block runs: the speed/memory choices of training and inference. Returns the number
    of blocks recomputed in backward.

    - `recompute_fraction`: activation checkpointing of the first fraction of the blocks (1 = all).
      With `keep_self_attention` those blocks keep their self-attention output (0.46 GB per block
      at 121x704x1280 for 7B, 0.58 GB for 14B) so backward does not pay for attention twice; the
      rest is recomputed.
    - `keep_attention_blocks`: only the first N recomputed blocks keep their self-attention output,
      the others are recomputed whole (None = every recomputed block keeps it). The 14B cannot keep
      all 36 within 80 GB: this is its memory/speed dial.
    - `compile_blocks`: regional torch.compile of every block (fuses the norm/modulation/RoPE
      element-wise work that is about 30% of an eager step). Only on GPUs.
    - `prefer_cudnn`: cuDNN's fused attention (forward and backward), the fastest on Hopper; torch
      versions that default to the flash kernel are 1.8x slower there.

    The choices wrap `forward` on the block instances, so module names (LoRA and checkpoint keys)
    do not change. Measured effect: benchmarks/RESULTS.md.
    """
    count = round(recompute_fraction * len(net.transformer_blocks))
    if keep_attention_blocks is not None and keep_attention_blocks < 0:
        raise ValueError(f"keep_attention_blocks must be >= 0 or None, not {keep_attention_blocks}")
    keeping = count if keep_attention_blocks is None else min(count, keep_attention_blocks)
    policy = functools.partial(create_selective_checkpoint_contexts, _keep_self_attention)
    if compile_blocks:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(net.transformer_blocks))
    for index, block in enumerate(net.transformer_blocks):
        forward = block.forward
        if prefer_cudnn and not compile_blocks:
            forward = functools.partial(_with_preferred_attention, forward)  # inside: recomputation uses it too
        if index < count:
            options = {"context_fn": policy} if keep_self_attention and index < keeping else {}
            forward = functools.partial(checkpoint, forward, use_reentrant=False, **options)
        if compile_blocks:
            forward = torch.compile(forward, dynamic=False)
            if prefer_cudnn:
                forward = functools.partial(_with_preferred_attention, forward)  # chosen when traced
        block.forward = forward
    return count


def reset_blocks(net: CosmosDiT) -> None:
    """Back to the plain blocks (drops what `configure_blocks` wrapped)."""
    for block in net.transformer_blocks:
        block.__dict__.pop("forward", None)


def _with_preferred_attention(forward, *args, **kwargs):
    if not args[0].is_cuda:
        return forward(*args, **kwargs)
    with sdpa_kernel(_PREFERRED_ATTENTION, set_priority=True):
        return forward(*args, **kwargs)


def _keep_self_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Save the output of self-attention, the costliest op to recompute; recompute everything else.

    Cross-attention (512 text tokens) is cheap to recompute and is not kept.
    """
    if op in _ATTENTION_OPS and args[1].shape[-2] == args[0].shape[-2]:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE
