"""The official sampling loop: EDM Euler, Karras sigmas, classifier-free guidance; for Video2World
also the condition frames (`FrameCondition`).

cosmos-predict1 runs diffusers 0.32.2's `EDMEulerScheduler(sigma_max=80, sigma_min=0.0002,
sigma_data=0.5)`: Karras schedule (rho 7) built in float32, final sigma 0, initial noise scaled by
`init_noise_sigma = sqrt(80^2 + 1)`. Newer diffusers build the ramp in float64 (up to 2.3e-5 off
at sigma 80), so the schedule is computed here exactly as the pinned version did.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cosmos_lora.model.edm import augmented_condition, condition_mask, denoise, frame_indicator
from cosmos_lora.model.parallel import CfgSplit

SIGMA_MAX = 80.0
SIGMA_MIN = 0.0002
RHO = 7.0
INIT_NOISE_SIGMA = math.sqrt(SIGMA_MAX**2 + 1)


def karras_sigmas(steps: int, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, rho=RHO) -> torch.Tensor:
    """`steps + 1` float32 sigmas from sigma_max down to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, steps)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, torch.zeros(1)])


@dataclass
class FrameCondition:
    """Video2World: the first `frames` latent frames are given (official `DiffusionV2WModel`, model_v2w.py).

    At every step whose sigma is above `augment_sigma`, those frames of the state are replaced by the
    clean latent noised to `augment_sigma` (then rescaled so the network sees it preconditioned at
    `augment_sigma`), and their x0 prediction by the clean latent. At the last steps (sigma <=
    `augment_sigma`: the last 2 of 35 at the default 0.001) they are denoised like the others. The
    condition-mask channel stays 1 on them throughout, in both CFG branches; the network never sees
    `augment_sigma`.
    """

    latent: torch.Tensor  # [B, 16, T, H, W] clean latents x sigma_data; frames past `frames` are ignored
    frames: int  # condition latent frames (1 for an image, 2 for 9 video frames)
    augment_sigma: float  # official default 0.001
    augment_noise: torch.Tensor  # [B, 16, T, H, W]: the same at every step and in both branches

    def indicator(self) -> torch.Tensor:
        """1 on the condition latent frames, `[1, 1, T, 1, 1]`."""
        return frame_indicator(self.frames, self.latent.shape[2], self.latent.device)

    def mask(self) -> torch.Tensor:
        """The network's condition-mask channel, `[B, 1, T, H, W]`."""
        return condition_mask(self.indicator(), self.latent)

    def replace_state(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """x' = ind*A + (1-ind)*x (official `_augment_noise_with_latent`)."""
        batch = x.shape[0]
        given = augmented_condition(
            self.latent, self.augment_noise, torch.full((batch,), self.augment_sigma, dtype=torch.float64),
            torch.full((batch,), sigma, dtype=torch.float64),
        )
        indicator = self.indicator()
        return indicator * given + (1 - indicator) * x

    def replace_x0(self, x0: torch.Tensor) -> torch.Tensor:
        indicator = self.indicator()
        return indicator * self.latent + (1 - indicator) * x0

    def active(self, sigma: float) -> bool:
        """The override holds while sigma is above the augment sigma (official: released when s_a >= sigma)."""
        return self.frames > 0 and self.augment_sigma < sigma


def augment_noise(seed: int, shape) -> torch.Tensor:
    """The official `misc.arch_invariant_rand`: numpy's RandomState(seed) standard normal, float32 on the CPU."""
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(tuple(shape)).astype(np.float32))


def _batched(cond: dict, uncond: dict) -> dict:
    """One batch holding the conditional then the unconditional branch."""
    return {
        key: torch.cat([value, uncond[key]]) if isinstance(value, torch.Tensor) and value.ndim > 0 else value
        for key, value in cond.items()
    }


@torch.no_grad()
def sample_latents(
    net: nn.Module,
    noise: torch.Tensor,  # [B, 16, T, H, W] standard normal
    cond: dict,  # crossattn_emb [B, L, D], fps, padding_mask
    uncond: dict,  # same keys; crossattn_emb of the negative prompt (zeros without one)
    steps: int = 35,
    guidance: float = 7.0,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    cfg: CfgSplit | None = None,
    condition: FrameCondition | None = None,
) -> torch.Tensor:
    """Clean latents `x0` (`[B, 16, T, H, W]`, float32, scaled by sigma_data like the official model's).

    With `cfg` this process computes one branch and swaps x0 with the process computing the other, so
    both end every step with the same `x` (the noise must be the same on both). With `condition`
    (Video2World) its frames are given (see `FrameCondition`).
    """
    sigmas = karras_sigmas(steps)
    x = noise.float() * INIT_NOISE_SIGMA
    if condition is not None:
        mask = condition.mask().to(x.device)
        cond, uncond = {**cond, "condition_mask": mask}, {**uncond, "condition_mask": mask}
    both = _batched(cond, uncond)
    batch = x.shape[0]
    for i in range(steps):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        conditioned = condition is not None and condition.active(sigma)
        if conditioned:
            x = condition.replace_state(x, sigma)
        if cfg is None:
            x0_both, _ = denoise(net, torch.cat([x, x]), torch.full((2 * batch,), sigma, device=x.device), **both)
            x0_cond, x0_uncond = x0_both[:batch], x0_both[batch:]
        else:
            x0_mine, _ = denoise(net, x, torch.full((batch,), sigma, device=x.device), **cfg.mine(cond, uncond))
            x0_cond, x0_uncond = cfg.combine(x0_mine)
        x0 = x0_cond + guidance * (x0_cond - x0_uncond)  # the same as guiding the raw output F
        if conditioned:
            x0 = condition.replace_x0(x0)  # the official F_L: the output that predicts exactly L
        x = x + (x - x0) / sigma * (sigma_next - sigma)  # from the replaced state, as the official Euler step
        if on_step is not None:
            on_step(i, x0, x)
    return x
