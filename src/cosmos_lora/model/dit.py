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
a checkpoint is one is read off that layer's width, never from a flag (`size_from_state_dict`).

Sizes live in `DIT_SIZES`; `tiny`, `tiny14b` and `tiny-v2w` are the 7B, 14B and 7B Video2World
architectures at test scale.
"""

import functools
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from diffusers import CosmosTransformer3DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

QK_NORM_EPS = 1e-6
LATENT_CHANNELS = 16
PATCH_SIZE = (1, 2, 2)
PATCH_VOLUME = PATCH_SIZE[0] * PATCH_SIZE[1] * PATCH_SIZE[2]


@dataclass(frozen=True)
class DiTSize:
    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    text_embed_dim: int = 1024
    adaln_lora_dim: int = 256
    max_size: tuple[int, int, int] = (128, 240, 240)  # latent (T, H, W)
    rope_scale: tuple[float, float, float] = (2.0, 1.0, 1.0)
    video2world: bool = False  # a condition-mask input channel (Video2World), read off the checkpoint

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def input_channels(self) -> int:
        """Channels into the patch embedding: latents, [condition mask,] padding mask."""
        return LATENT_CHANNELS + int(self.video2world) + 1


DIT_SIZES: dict[str, DiTSize] = {
    "7b": DiTSize(num_attention_heads=32, attention_head_dim=128, num_layers=28),
    "14b": DiTSize(num_attention_heads=40, attention_head_dim=128, num_layers=36, rope_scale=(2.0, 2.0, 2.0)),
    # same architecture as the fixtures' tiny GeneralDIT: 2 blocks, 2 heads of 32, text dim 32
    "tiny": DiTSize(
        num_attention_heads=2, attention_head_dim=32, num_layers=2, text_embed_dim=32, adaln_lora_dim=16,
        max_size=(16, 32, 32),
    ),
    # the 14B's differences from the 7B at test scale: more heads of the same width, more blocks,
    # RoPE extrapolation 2 on every axis (official 14B configs: rope_{h,w,t}_extrapolation_ratio=2)
    "tiny14b": DiTSize(
        num_attention_heads=5, attention_head_dim=32, num_layers=3, text_embed_dim=32, adaln_lora_dim=16,
        max_size=(16, 32, 32), rope_scale=(2.0, 2.0, 2.0),
    ),
}
# Video2World: the same networks with the condition-mask channel (official V2W configs: 7B faditv2_7b)
DIT_SIZES["7b-v2w"] = replace(DIT_SIZES["7b"], video2world=True)
DIT_SIZES["tiny-v2w"] = replace(DIT_SIZES["tiny"], video2world=True)
# The official model each size is (the tiny sizes stand in for one in tests): picks the official
# inference's folder names and what it can load.
OFFICIAL_MODEL = {"7b": "7b", "14b": "14b", "tiny": "7b", "tiny14b": "14b", "7b-v2w": "7b-v2w", "tiny-v2w": "7b-v2w"}


def size_name(size: "DiTSize") -> str | None:
    """'7b', '14b', 'tiny' or 'tiny14b' when `size` is a known size."""
    return next((name for name, known in DIT_SIZES.items() if known == size), None)


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


def size_from_state_dict(state: dict[str, torch.Tensor]) -> DiTSize:
    """Reads the architecture off official (`net.*`) weights; rope_scale comes from the known sizes.

    Text2World or Video2World is the patch embedding's input width: 68 = (16 + 1)·4, 72 = (16 + 2)·4.
    """
    width, features = state["net.x_embedder.proj.1.weight"].shape
    video2world = {(LATENT_CHANNELS + 1) * PATCH_VOLUME: False, (LATENT_CHANNELS + 2) * PATCH_VOLUME: True}.get(features)
    if video2world is None:
        raise ValueError(f"x_embedder.proj.1.weight takes {features} features: neither Text2World (68) nor Video2World (72)")
    num_layers = 1 + max(int(k.split(".")[2].removeprefix("block")) for k in state if k.startswith("net.blocks.block"))
    head_dim = state["net.blocks.block0.blocks.0.block.attn.to_q.1.weight"].shape[0]
    known = {s.width: s for s in DIT_SIZES.values()}
    rope_scale = known[width].rope_scale if width in known else (2.0, 1.0, 1.0)
    return DiTSize(
        num_attention_heads=width // head_dim,
        attention_head_dim=head_dim,
        num_layers=num_layers,
        text_embed_dim=state["net.blocks.block0.blocks.1.block.attn.to_k.0.weight"].shape[1],
        adaln_lora_dim=state["net.blocks.block0.blocks.0.adaLN_modulation.1.weight"].shape[0],
        max_size=(
            state["net.extra_pos_embedder.pos_emb_t"].shape[0],
            state["net.extra_pos_embedder.pos_emb_h"].shape[0] * 2,
            state["net.extra_pos_embedder.pos_emb_w"].shape[0] * 2,
        ),
        rope_scale=rope_scale,
        video2world=video2world,
    )


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
