"""Power-function EMA of the LoRA weights (Karras et al. 2024, "EDM2"), as the official trainer keeps.

beta_t = (1 - 1/t)^(gamma + 1), with gamma set by the relative width `sigma_rel` of the averaging
window: the average forgets at a rate proportional to training length, so it needs no tuning for
the number of steps.
"""

import numpy as np
import torch


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    t = sigma_rel**-2
    return float(np.roots([1, 7, 16 - t, 12 - t]).real.max())


class PowerEMA:
    def __init__(self, params: dict[str, torch.Tensor], sigma_rel: float = 0.1):
        self.gamma = sigma_rel_to_gamma(sigma_rel)
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor], step: int) -> None:
        """`step` counts optimizer steps from 1; step 1 copies the weights."""
        beta = (1 - 1 / step) ** (self.gamma + 1)
        for name, p in params.items():
            self.shadow[name].lerp_(p.detach().float(), 1 - beta)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)
