"""The Cosmos-Predict1 DiT's sizes: what a checkpoint's architecture is, read off its tensors.

Pure facts (no network is built here), so the CLI checks a checkpoint, an adapter or a video size
without importing diffusers; `model/dit.py` builds the network of a size.

Sizes live in `DIT_SIZES`; `tiny`, `tiny14b` and `tiny-v2w` are the 7B, 14B and 7B Video2World
architectures at test scale. Video2World is the same network with one more input channel (the
condition mask), so its patch embedding takes 18·1·2·2 = 72 features instead of 68.
"""

from dataclasses import dataclass, replace

import torch

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
