"""The official text2world sampling loop: EDM Euler, Karras sigmas, classifier-free guidance.

cosmos-predict1 runs diffusers 0.32.2's `EDMEulerScheduler(sigma_max=80, sigma_min=0.0002,
sigma_data=0.5)`: Karras schedule (rho 7) built in float32, final sigma 0, initial noise scaled by
`init_noise_sigma = sqrt(80^2 + 1)`. Newer diffusers build the ramp in float64 (up to 2.3e-5 off
at sigma 80), so the schedule is computed here exactly as the pinned version did.
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from cosmos_lora.model.edm import denoise
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
) -> torch.Tensor:
    """Clean latents `x0` (`[B, 16, T, H, W]`, float32, scaled by sigma_data like the official model's).

    With `cfg` this process computes one branch and swaps x0 with the process computing the other, so
    both end every step with the same `x` (the noise must be the same on both).
    """
    sigmas = karras_sigmas(steps)
    x = noise.float() * INIT_NOISE_SIGMA
    both = _batched(cond, uncond)
    batch = x.shape[0]
    for i in range(steps):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        if cfg is None:
            x0_both, _ = denoise(net, torch.cat([x, x]), torch.full((2 * batch,), sigma, device=x.device), **both)
            x0_cond, x0_uncond = x0_both[:batch], x0_both[batch:]
        else:
            x0_mine, _ = denoise(net, x, torch.full((batch,), sigma, device=x.device), **cfg.mine(cond, uncond))
            x0_cond, x0_uncond = cfg.combine(x0_mine)
        x0 = x0_cond + guidance * (x0_cond - x0_uncond)  # the same as guiding the raw output F
        x = x + (x - x0) / sigma * (sigma_next - sigma)
        if on_step is not None:
            on_step(i, x0, x)
    return x
