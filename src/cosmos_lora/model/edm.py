"""EDM preconditioning and the official training loss (Karras et al. 2022, as cosmos-predict1 uses it).

    c_skip = sd^2/(s^2+sd^2)   c_out = s*sd/sqrt(s^2+sd^2)   c_in = 1/sqrt(s^2+sd^2)   c_noise = 0.25 ln s
    x0_pred = c_skip*x_t + c_out*F(c_in*x_t, c_noise)
    loss = mean( w(s)*(x0 - x0_pred)^2 * exp(-logvar(c_noise)) + logvar(c_noise) ),  w = (s^2+sd^2)/(s*sd)^2

`logvar` is the checkpoint's frozen uncertainty head, so **negative losses are normal**.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cosmos_lora.errors import UserError

SIGMA_DATA = 0.5


@dataclass
class Preconditioning:
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def precondition(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> Preconditioning:
    """Coefficients for a `[B]` sigma, shaped `[B, 1, 1, 1, 1]` (c_noise stays `[B]`)."""
    sigma = sigma.double()
    total = sigma**2 + sigma_data**2
    as_5d = lambda t: t.float().view(-1, 1, 1, 1, 1)  # noqa: E731
    return Preconditioning(
        c_skip=as_5d(sigma_data**2 / total),
        c_out=as_5d(sigma * sigma_data / total.sqrt()),
        c_in=as_5d(1 / total.sqrt()),
        c_noise=(0.25 * sigma.log()).float(),
    )


def denoise(net: nn.Module, x_t: torch.Tensor, sigma: torch.Tensor, **condition) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 prediction, raw network output F) for noisy latents `x_t` at noise level `sigma` `[B]`."""
    coeffs = precondition(sigma)
    dtype = next(net.parameters()).dtype
    raw = net(
        x=(coeffs.c_in * x_t).to(dtype), timesteps=coeffs.c_noise.to(dtype), **condition
    ).float()
    return coeffs.c_skip * x_t + coeffs.c_out * raw, raw


class LogVarHead(nn.Module):
    """The official `Sequential(FourierFeatures(128, normalize=True), Linear(128, 1, bias=False))`."""

    def __init__(self, channels: int = 128):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels))
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels))
        self.linear = nn.Linear(channels, 1, bias=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:  # [B] -> [B, 1]
        features = torch.outer(c_noise.float(), self.freqs.float()) + self.phases.float()
        return self.linear(features.cos() * math.sqrt(2)).float()

    def load_official_state(self, state: dict[str, torch.Tensor], source: Path | str) -> None:
        names = {"0.freqs": "freqs", "0.phases": "phases", "1.weight": "linear.weight"}
        if set(state) != set(names):
            raise UserError(
                f"{source} has logvar keys {sorted(state)}, expected {sorted(names)}.",
                "use an official Cosmos-Predict1 checkpoint (it carries the loss's logvar head).",
            )
        self.load_state_dict({names[k]: v.float() for k, v in state.items()})

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        return {"0.freqs": self.freqs, "0.phases": self.phases, "1.weight": self.linear.weight}


@dataclass
class TrainingLoss:
    loss: torch.Tensor  # scalar
    x_t: torch.Tensor
    x0_pred: torch.Tensor
    logvar: torch.Tensor  # [B, 1]
    edm_loss: torch.Tensor  # [B, C, T, H, W]
    kendall_loss: torch.Tensor  # [B, C*T*H*W]


def loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def training_loss(
    net: nn.Module, logvar: LogVarHead, x0: torch.Tensor, sigma: torch.Tensor, epsilon: torch.Tensor, **condition
) -> TrainingLoss:
    """The official `compute_loss_with_epsilon_and_sigma` with `loss_reduce="mean"`, in float32."""
    x_t = x0 + sigma.view(-1, 1, 1, 1, 1) * epsilon
    x0_pred, _ = denoise(net, x_t, sigma, **condition)
    edm_loss = loss_weight(sigma).view(-1, 1, 1, 1, 1) * (x0 - x0_pred) ** 2
    head = logvar(precondition(sigma).c_noise)
    kendall = edm_loss.flatten(1) * torch.exp(-head) + head
    return TrainingLoss(kendall.mean(), x_t, x0_pred, head, edm_loss, kendall)


def sample_training_sigma(batch: int, generator: torch.Generator | None = None, p_mean=0.0, p_std=1.0) -> torch.Tensor:
    """ln(sigma) ~ N(p_mean, p_std), unclamped, as the official EDMSDE draws it."""
    return torch.exp(p_mean + p_std * torch.randn(batch, generator=generator, dtype=torch.float64)).float()
