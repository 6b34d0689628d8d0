"""EDM preconditioning and the official training loss (Karras et al. 2022, as cosmos-predict1 uses it).

    c_skip = sd^2/(s^2+sd^2)   c_out = s*sd/sqrt(s^2+sd^2)   c_in = 1/sqrt(s^2+sd^2)   c_noise = 0.25 ln s
    x0_pred = c_skip*x_t + c_out*F(c_in*x_t, c_noise)
    loss = mean( w(s)*(x0 - x0_pred)^2 * exp(-logvar(c_noise)) + logvar(c_noise) ),  w = (s^2+sd^2)/(s*sd)^2

`logvar` is the checkpoint's frozen uncertainty head, so **negative losses are normal**.

Video2World (official `ExtendDiffusionModel`, shared/REFERENCE-video2world.md §3.5) gives the first
latent frames as condition: there the network input is the clean latent noised to a small augment
sigma (rescaled to look preconditioned at it), and x0_pred is the clean latent, so those frames add
zero MSE but still count in the mean (and still add their `logvar`).
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


def frame_indicator(condition_frames: int, frames: int, device: torch.device | str | None = None) -> torch.Tensor:
    """1 on the first `condition_frames` latent frames, `[1, 1, frames, 1, 1]`."""
    return (torch.arange(frames, device=device) < condition_frames).float().view(1, 1, frames, 1, 1)


def condition_mask(indicator: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The network's condition-mask channel `[B, 1, T, H, W]` for latents `like` `[B, C, T, H, W]`."""
    batch, _, frames, height, width = like.shape
    return indicator.expand(batch, 1, frames, height, width).contiguous()


def augmented_condition(latent: torch.Tensor, noise: torch.Tensor, augment_sigma: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(L + s_a*eps) * c_in(s_a) / c_in(sigma), per sample (`[B]` sigmas): inside the network input
    (scaled by c_in(sigma)) the condition frames look preconditioned at s_a."""
    device = latent.device
    c_in_augment, c_in = precondition(augment_sigma).c_in.to(device), precondition(sigma).c_in.to(device)
    return (latent + augment_sigma.float().to(device).view(-1, 1, 1, 1, 1) * noise) * c_in_augment / c_in


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


@dataclass
class TrainingCondition:
    """Video2World training: the first `frames` latent frames of the clip are given."""

    frames: int  # official: uniform on {0, 1, 2}, one draw per step
    augment_sigma: torch.Tensor  # [B]; official: ln s_a ~ N(-3, 2)
    augment_noise: torch.Tensor  # like x0; fresh, independent of the training noise


def training_loss(
    net: nn.Module, logvar: LogVarHead, x0: torch.Tensor, sigma: torch.Tensor, epsilon: torch.Tensor,
    frames: TrainingCondition | None = None, **condition
) -> TrainingLoss:
    """The official `compute_loss_with_epsilon_and_sigma` with `loss_reduce="mean"`, in float32.

    With `frames` (a Video2World network): the condition frames as `ExtendDiffusionModel.denoise` has them.
    """
    x_t = x0 + sigma.view(-1, 1, 1, 1, 1) * epsilon
    if frames is None:
        x0_pred, _ = denoise(net, x_t, sigma, **condition)
    else:
        indicator = frame_indicator(frames.frames, x0.shape[2], x0.device)
        given = augmented_condition(x0, frames.augment_noise, frames.augment_sigma, sigma)
        x_in = indicator * given + (1 - indicator) * x_t
        x0_net, _ = denoise(net, x_in, sigma, condition_mask=condition_mask(indicator, x0), **condition)
        x0_pred = indicator * x0 + (1 - indicator) * x0_net
    edm_loss = loss_weight(sigma).view(-1, 1, 1, 1, 1) * (x0 - x0_pred) ** 2
    head = logvar(precondition(sigma).c_noise)
    kendall = edm_loss.flatten(1) * torch.exp(-head) + head
    return TrainingLoss(kendall.mean(), x_t, x0_pred, head, edm_loss, kendall)


def sample_training_sigma(batch: int, generator: torch.Generator | None = None, p_mean=0.0, p_std=1.0) -> torch.Tensor:
    """ln(sigma) ~ N(p_mean, p_std), unclamped, as the official EDMSDE draws it."""
    return torch.exp(p_mean + p_std * torch.randn(batch, generator=generator, dtype=torch.float64)).float()
