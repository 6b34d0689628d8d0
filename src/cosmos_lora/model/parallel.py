"""One video on several processes: Ulysses sequence parallelism inside the DiT, CFG parallelism across branches.

A *video group* of G processes makes one video at a time. With CFG parallelism (G even) the first G/2
run the conditional branch of every step and the others the unconditional one; the K processes of one
branch (K = G/2, else G) split the video's tokens:

- each holds 1/K of the tokens (contiguous in the network's t-h-w order) from the patch embedding's
  linear on: adaLN, cross-attention (the 512 text keys/values are small: every process makes them),
  MLP and the final layer;
- RoPE and the learnable position embedding are computed for the whole video and each process keeps
  its tokens' rows, so every token is embedded at its true position;
- self-attention exchanges q, k, v with one all-to-all (tokens -> heads): each process attends over all
  tokens for H/K heads; a second all-to-all brings the output back to its tokens (H/K must be whole);
- the final layer's output is gathered, so the network returns the whole prediction on every process
  and the sampler above it runs unchanged (and identically) on every process.

The branches meet once per step: the two processes holding the same tokens of the two branches swap
their x0 (`CfgSplit.combine`). The layer wraps module instances (forward hooks, the self-attention
processor), so parameter names, LoRA, FP8 linears and compiled blocks are untouched.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

from cosmos_lora.errors import UserError

# -- the layout: how many processes make one video ------------------------------------------------


@dataclass(frozen=True)
class VideoLayout:
    processes: int  # all processes of the launch
    per_video: int  # G: processes that make one video together
    cfg_parallel: bool  # the two CFG branches on two halves of the video group (needs G even)

    @property
    def branches(self) -> int:
        return 2 if self.cfg_parallel else 1

    @property
    def sequence_size(self) -> int:
        """K: processes that split the tokens of one branch."""
        return self.per_video // self.branches

    @property
    def videos_at_once(self) -> int:
        return self.processes // self.per_video

    def describe(self) -> str:
        split = f"CFG branches x {self.sequence_size} token shards" if self.cfg_parallel else f"{self.sequence_size} token shards"
        return f"{self.processes} processes: {self.videos_at_once} video(s) at a time on {self.per_video} each ({split})"


def video_layout(processes: int, per_video: int, cfg_parallel: bool = True) -> VideoLayout:
    """CFG parallelism where it can be: with an even number of processes per video."""
    return VideoLayout(processes, per_video, cfg_parallel and per_video % 2 == 0)


def check_layout(layout: VideoLayout, heads: int, tokens: int) -> None:
    """One line with the fix when the network or the world cannot be split this way."""
    g, n, k = layout.per_video, layout.processes, layout.sequence_size
    if g > n:
        raise UserError(f"--gpus-per-video {g} is more than the {n} processes.",
                        f"use --gpus-per-video {n} or less, or --nproc {g}.")
    if n % g:
        raise UserError(f"{n} processes cannot be grouped into videos of {g}.",
                        f"use a --gpus-per-video that divides {n}, or --nproc {g * (n // g)}.")
    if heads % k:
        raise UserError(
            f"{k} token shards per video do not divide the DiT's {heads} attention heads.",
            f"use --gpus-per-video with {layout.branches} x a divisor of {heads}.",
        )
    if tokens % k:
        raise UserError(
            f"{k} token shards per video do not divide the video's {tokens} tokens.",
            "use another --gpus-per-video, or a resolution/frame count whose token count it divides.",
        )


def choose_layout(processes: int, jobs: int, heads: int, tokens: int, per_video: int | None = None,
                  cfg_parallel: bool = True) -> VideoLayout:
    """The layout for `jobs` videos (each (prompt, seed) with its stages) on `processes` processes.

    `per_video` forces G (checked). Otherwise G is the smallest valid divisor of `processes` that leaves
    no video group without a video: one job gets every process, `processes` jobs or more get one each.
    Without a valid G that uses every process (e.g. 3 processes, 1 job: 3 does not divide the heads),
    the largest valid G.
    """
    def layout(g: int) -> VideoLayout:
        return video_layout(processes, g, cfg_parallel)

    if per_video is not None:
        chosen = layout(per_video)
        check_layout(chosen, heads, tokens)
        return chosen
    valid = []
    for g in range(1, processes + 1):
        try:
            check_layout(layout(g), heads, tokens)
            valid.append(g)
        except UserError:
            continue
    busy = [g for g in valid if processes // g <= max(jobs, 1)]
    return layout(busy[0] if busy else valid[-1])


# -- the process groups ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoGroups:
    """This process's place in the layout, with the process groups it talks over (None when alone)."""

    layout: VideoLayout
    video: int  # which video group this process is in
    index: int  # its place in the video group; 0 decodes and writes
    sequence: dist.ProcessGroup | None  # the K processes of its branch
    cfg: dist.ProcessGroup | None  # the 2 processes holding its tokens in both branches
    members: dist.ProcessGroup | None = None  # all G processes of its video group (G > 1)

    @property
    def leader(self) -> int:
        """The global rank of its video group's first process (the one that decodes and writes)."""
        return self.video * self.layout.per_video

    @property
    def leads_video(self) -> bool:
        return self.index == 0

    @property
    def branch(self) -> int:
        """0: conditional, 1: unconditional (always 0 without CFG parallelism)."""
        return self.index // self.layout.sequence_size

    @property
    def shard(self) -> int:
        return self.index % self.layout.sequence_size


def make_groups(layout: VideoLayout, rank: int) -> VideoGroups:
    """Every process calls this in the same order (`dist.new_group` is collective over the world)."""
    g, k = layout.per_video, layout.sequence_size
    video, index = divmod(rank, g)
    sequence = cfg = members = None
    for first in range(0, layout.processes, g):
        if g > 1:
            group = dist.new_group(list(range(first, first + g)))
            members = group if first <= rank < first + g else members
        if k > 1:
            for branch in range(layout.branches):
                ranks = [first + branch * k + s for s in range(k)]
                group = dist.new_group(ranks)
                sequence = group if rank in ranks else sequence
        if layout.cfg_parallel:
            for s in range(k):
                ranks = [first + s, first + k + s]  # conditional first: `CfgSplit.combine` relies on it
                group = dist.new_group(ranks)
                cfg = group if rank in ranks else cfg
    return VideoGroups(layout, video, index, sequence, cfg, members)


def from_leader(groups: VideoGroups, tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The video group leader's float32 `tensor` on every process of the group (the others pass None):
    what one process computed for all of them, e.g. the prompts' T5 embeddings."""
    dims = torch.zeros(8, dtype=torch.int64, device=device)  # [ndim, *shape]: the others allocate from it
    if groups.leads_video:
        dims[0] = tensor.dim()
        dims[1 : 1 + tensor.dim()] = torch.tensor(tensor.shape)
    dist.broadcast(dims, src=groups.leader, group=groups.members)
    shape = dims[1 : 1 + int(dims[0])].tolist()
    if groups.leads_video:
        received = tensor.to(device, torch.float32).contiguous()
    else:
        received = torch.empty(shape, dtype=torch.float32, device=device)
    dist.broadcast(received, src=groups.leader, group=groups.members)
    return received


# -- CFG parallelism --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CfgSplit:
    """The two branches of classifier-free guidance on two processes."""

    group: dist.ProcessGroup
    branch: int  # 0: conditional, 1: unconditional

    def mine(self, cond: dict, uncond: dict) -> dict:
        return uncond if self.branch else cond

    def combine(self, x0_mine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 of the conditional, x0 of the unconditional branch): one exchange per step."""
        both = [torch.empty_like(x0_mine) for _ in range(2)]
        dist.all_gather(both, x0_mine.contiguous(), group=self.group)
        return both[0], both[1]


def cfg_split(groups: VideoGroups | None) -> CfgSplit | None:
    return CfgSplit(groups.cfg, groups.branch) if groups is not None and groups.cfg is not None else None


# -- sequence (Ulysses) parallelism -----------------------------------------------------------------


def _all_to_all(tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Piece j of dim 0 goes to process j; piece j of the result came from process j."""
    tensor = tensor.contiguous()
    received = torch.empty_like(tensor)
    dist.all_to_all_single(received, tensor, group=group)
    return received


class UlyssesSelfAttention:
    """diffusers' `CosmosAttnProcessor2_0` for self-attention over tokens split across `group`.

    q/k RMSNorm and RoPE are per token and per head, so they run on this process's tokens before the
    exchange; the attention itself runs over all tokens for this process's H/K heads.
    """

    def __init__(self, group: dist.ProcessGroup, size: int):
        # diffusers only where a network is split: the CLI chooses the layout (above) without importing it
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        self.group, self.size = group, size
        self.attend, self.rotate = dispatch_attention_fn, apply_rotary_emb

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            # installed on the blocks' self-attention only (attn1), which the DiT calls with neither
            raise ValueError("UlyssesSelfAttention serves self-attention without a mask; cross-attention keeps its own")
        k = self.size
        query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
                             for proj in (attn.to_q, attn.to_k, attn.to_v))  # [B, H, S/K, D]
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = self.rotate(query, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            key = self.rotate(key, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
        qkv = torch.stack([query, key, value]).transpose(2, 3)  # [3, B, S/K, H, D]
        three, batch, local, heads, dim = qkv.shape
        # tokens -> heads: head group j goes to process j, which gets every process's tokens of it
        qkv = qkv.view(three, batch, local, k, heads // k, dim).permute(3, 0, 1, 2, 4, 5)  # [K, 3, B, S/K, H/K, D]
        qkv = _all_to_all(qkv, self.group).permute(1, 2, 0, 3, 4, 5)  # [3, B, K (token piece), S/K, H/K, D]
        query, key, value = qkv.reshape(three, batch, k * local, heads // k, dim).unbind(0)  # [B, S, H/K, D]
        out = self.attend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
        # heads -> tokens
        out = out.view(batch, k, local, heads // k, dim).transpose(0, 1)  # [K (token piece), B, S/K, H/K, D]
        out = _all_to_all(out, self.group).permute(1, 2, 0, 3, 4)  # [B, S/K, K (head group), H/K, D]
        out = out.reshape(batch, local, heads * dim).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class SequenceParallel:
    """Splits a `CosmosDiT`'s tokens over `group` (K processes); `remove()` restores the network.

    Every process calls the network with the whole input and gets the whole output.
    """

    def __init__(self, net, group: dist.ProcessGroup):
        self.net, self.group = net, group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        heads = net.config.num_attention_heads
        if heads % self.size:
            raise ValueError(f"{self.size} processes do not divide {heads} heads")  # check_layout says it first
        self.processors = [block.attn1.processor for block in net.transformer_blocks]
        for block in net.transformer_blocks:
            block.attn1.set_processor(UlyssesSelfAttention(group, self.size))
        self.handles = [
            net.patch_embed.proj.register_forward_pre_hook(self._my_patches),
            net.rope.register_forward_hook(self._my_rope_rows),
            net.proj_out.register_forward_hook(self._all_tokens),
        ]
        if net.learnable_pos_embed is not None:
            self.handles.append(net.learnable_pos_embed.register_forward_hook(self._my_position_rows))

    def _mine(self, tokens: torch.Tensor, dim: int) -> torch.Tensor:
        count = tokens.shape[dim]
        if count % self.size:
            raise ValueError(f"{count} tokens do not split over {self.size} processes")  # check_layout says it first
        return tokens.narrow(dim, self.rank * (count // self.size), count // self.size)

    def _my_patches(self, module, args):
        (patches,) = args  # [B, T', H', W', C*p] -> [B, S/K, 1, 1, C*p]: the model flattens dims 1-3 next
        return (self._mine(patches.flatten(1, 3), 1)[:, :, None, None],)

    def _my_rope_rows(self, module, args, output):
        return tuple(self._mine(part, 0) for part in output)  # (cos, sin), [S, D] each

    def _my_position_rows(self, module, args, output):
        return self._mine(output, 1)  # [B, S, C]

    def _all_tokens(self, module, args, output):
        pieces = [torch.empty_like(output) for _ in range(self.size)]
        dist.all_gather(pieces, output.contiguous(), group=self.group)
        return torch.cat(pieces, dim=1)  # [B, S, p*C]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for block, processor in zip(self.net.transformer_blocks, self.processors):
            block.attn1.set_processor(processor)


def parallelize(net, groups: VideoGroups | None) -> SequenceParallel | None:
    """The network's tokens split over this process's branch group (nothing to do for K = 1)."""
    if groups is None or groups.sequence is None:
        return None
    return SequenceParallel(net, groups.sequence)
