"""The evaluation loss: the official training loss on held-out clips at fixed noise, so steps and runs compare.

    clips   trainer.evaluation.clips: held out of training by clip name (`data.split`), or `--eval-dataset`'s
    sigmas  S noise levels, the quantiles (i + 0.5) / S of the training distribution ln(sigma) ~ N(p_mean, p_std)
            (times `model.sigma_multiplier`: 4 for Video2World)
    frames  Video2World: the first `eval_condition_frames` latent frames given (1: the image case), noised to
            `eval_augment_sigma` with noise of their own seed
    noise   per clip and level, drawn on the CPU from a generator seeded by the clip's name and the level's index
    loss    the official loss (`model.edm.training_loss`) of each (clip, sigma), with the clip's own caption
            (no text dropout), one at a time; `eval_loss` is the mean over all of them, `eval_loss_sigma_<s>`
            the mean over the clips at one level, `eval_loss_ema` and `eval_loss_ema_sigma_<s>` the same with
            the EMA weights

The training loss draws a new sigma and noise for every sample, so it wanders by much more than the
LoRA changes it; this number holds both fixed and moves only with the weights. It is the same on a
rerun, for any number of processes, and across a stop and resume: clips are dealt to the ranks, each
(clip, sigma) runs alone (batch 1, nothing depends on which rank or which neighbours), and the per-clip
values are gathered and summed in clip order in float64. Like validation, it draws nothing from the
training's RNG streams and leaves the weights bit for bit as they were.
"""

import math
import statistics
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cosmos_lora.config import LazyDict, instantiate
from cosmos_lora.data.split import clip_key, smallest_splittable
from cosmos_lora.distributed import Distributed
from cosmos_lora.model.edm import SIGMA_DATA, TrainingCondition, training_loss
from cosmos_lora.model.tokenizer import VideoTokenizer
from cosmos_lora.train.validation import rng_untouched, swapped_in


def evaluation_enabled(config: LazyDict) -> bool:
    """An evaluation every `trainer.eval_every` steps, on the clips the launch chose (none: off)."""
    evaluation = config.trainer.get("evaluation")  # runs saved before evaluation existed have none
    return bool(config.trainer.get("eval_every")) and evaluation is not None and bool(evaluation.clips)


def evaluation_summary(config: LazyDict, evaluator: "Evaluator | None", training_clips: int) -> str:
    """The trainer's first line on the evaluation, or why there is none although one was asked for."""
    evaluation = config.trainer.get("evaluation")
    if evaluator is not None:
        source = f"of {evaluation.dataset}" if evaluation.dataset else "held out"
        return (f"; eval loss every {evaluator.every} steps on {len(evaluator.clips)} clips {source} "
                f"x {len(evaluator.sigmas)} sigmas" + (" (+EMA)" if evaluator.with_ema else ""))
    if config.trainer.get("eval_every") and evaluation is not None and evaluation.fraction > 0:
        needed = smallest_splittable(evaluation.fraction, evaluation.min_clips)
        return (f"; no eval loss: {training_clips} clips are too few to hold out {evaluation.min_clips} or "
                f"{evaluation.fraction:g} of them (a split needs {needed}), so every clip is trained on")
    return ""


def evaluation_sigmas(count: int, p_mean: float, p_std: float) -> list[float]:
    """`count` quantiles of the training sigma distribution: exp(p_mean + p_std * Phi^-1((i + 0.5) / count))."""
    normal = statistics.NormalDist(p_mean, p_std)  # pure Python: the same numbers everywhere
    return [math.exp(normal.inv_cdf((i + 0.5) / count)) for i in range(count)]


def noise_seed(clip: str, level: int) -> int:
    """The seed of one clip's noise at one level: from its name, so it is the same wherever the clip runs."""
    return clip_key(f"{clip}\0{level}") & (2**63 - 1)


def sigma_column(sigma: float, total: str = "eval_loss") -> str:
    """The column of one level's mean: `eval_loss_sigma_0.22`, `eval_loss_ema_sigma_0.22`."""
    return f"{total}_sigma_{sigma:.3g}"


@dataclass
class _Clip:
    x0: torch.Tensor  # [1, C, T, H, W] float32 on the CPU: the clean latent times sigma_data
    text: torch.Tensor  # [1, L, D]
    fps: torch.Tensor  # [1]


class Evaluator:
    """Computes the evaluation loss of the current LoRA (and its EMA) on every rank together."""

    def __init__(self, config: LazyDict, dist_info: Distributed, dtype: torch.dtype):
        settings = config.trainer.evaluation
        self.every, self.dist, self.device, self.dtype = config.trainer.eval_every, dist_info, dist_info.device, dtype
        self.clips = sorted(settings.clips)
        multiplier = config.model.get("sigma_multiplier", 1.0)  # Video2World trains at 4x the sigmas
        self.sigmas = [multiplier * s for s in evaluation_sigmas(settings.sigmas, config.model.sigma_p_mean, config.model.sigma_p_std)]
        self.video2world = config.model.get("video2world")  # the recipe, when the network takes condition frames
        self.with_ema = bool(settings.ema and config.trainer.ema.enabled)
        root = settings.root or config.dataloader_train.dataset.root  # another dataset, or the training one's
        latents = settings.latents_dir if settings.root else config.dataloader_train.dataset.latents_dir
        self.dataset = instantiate(config.dataloader_train.dataset, root=root, latents_dir=latents)
        self.mine = list(enumerate(self.clips))[dist_info.rank :: dist_info.world_size]  # (row, clip)
        self._cache: dict[str, _Clip] = {}  # filled at the first evaluation: a clip is read and encoded once

    @property
    def columns(self) -> list[str]:
        per_sigma = [sigma_column(s, total) for total in ("eval_loss", "eval_loss_ema") for s in self.sigmas]
        return ["eval_loss", "eval_loss_ema"] + per_sigma + ["s_per_eval"]

    def due(self, step: int, max_iter: int) -> bool:
        return step % self.every == 0 or step == max_iter

    def run(self, net: torch.nn.Module, logvar: torch.nn.Module, tokenizer: VideoTokenizer, params: dict,
            ema) -> dict[str, float]:
        """{eval_loss, eval_loss_sigma_<s>..., eval_loss_ema, eval_loss_ema_sigma_<s>...}: the same numbers on
        every rank."""
        modes = {module: module.training for module in net.modules()}
        net.eval()
        try:
            with rng_untouched(self.device), torch.no_grad():
                values = self._totals(self._losses(net, logvar, tokenizer), "eval_loss")
                if self.with_ema:
                    with swapped_in(params, ema.state_dict()):
                        values.update(self._totals(self._losses(net, logvar, tokenizer), "eval_loss_ema"))
        finally:
            for module, mode in modes.items():
                module.training = mode
        return values

    def _losses(self, net, logvar, tokenizer) -> torch.Tensor:
        """[clips, sigmas] float64: this rank's clips filled in, gathered from every rank (exact: one
        non-zero term per entry)."""
        losses = torch.zeros(len(self.clips), len(self.sigmas), dtype=torch.float64, device=self.device)
        for row, clip in self.mine:
            data = self._clip(clip, tokenizer)
            for level, sigma in enumerate(self.sigmas):
                losses[row, level] = self._loss(net, logvar, clip, data, level, sigma)
        if self.dist.enabled:
            dist.all_reduce(losses)
        return losses.cpu()

    def _loss(self, net, logvar, clip: str, data: _Clip, level: int, sigma: float) -> torch.Tensor:
        epsilon = torch.randn(data.x0.shape, generator=torch.Generator().manual_seed(noise_seed(clip, level)))
        x0, text = data.x0.to(self.device), data.text.to(self.device)
        sigmas = torch.tensor([sigma], dtype=torch.float32, device=self.device)
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        with autocast:
            loss = training_loss(net, logvar, x0, sigmas, epsilon.to(self.device), self._condition(clip, level, x0),
                                 crossattn_emb=text, fps=data.fps.to(self.device)).loss
        return loss.double()

    def _condition(self, clip: str, level: int, x0: torch.Tensor) -> TrainingCondition | None:
        """Video2World: the clip's first latent frame(s) given, noised to a fixed augment sigma with noise of
        its own seed (the image-to-video case of `infer --image`); None for Text2World."""
        if self.video2world is None:
            return None
        seed = noise_seed(clip, level) ^ 1  # another stream than the training noise's
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(self.device)
        augment = torch.tensor([self.video2world.get("eval_augment_sigma", 0.001)], device=self.device)
        return TrainingCondition(int(self.video2world.get("eval_condition_frames", 1)), augment, noise)

    def _clip(self, clip: str, tokenizer: VideoTokenizer) -> _Clip:
        if clip not in self._cache:
            sample = self.dataset[self.dataset.clips.index(clip)]
            if "latent" in sample:
                latent = sample["latent"][None].float()
            else:
                latent = tokenizer.encode(sample["video"][None].to(self.device)).float().cpu()
            self._cache[clip] = _Clip(latent * SIGMA_DATA, sample["t5_text_embeddings"][None], sample["fps"][None])
        return self._cache[clip]

    def _totals(self, losses: torch.Tensor, name: str) -> dict[str, float]:
        """The mean and each level's mean, summed in clip order (and level order): the same float on every
        rank and world size."""
        values = {name: float(sum(float(v) for v in losses.flatten()) / losses.numel())}
        for level, sigma in enumerate(self.sigmas):
            values[sigma_column(sigma, name)] = float(sum(float(v) for v in losses[:, level]) / len(self.clips))
        return values
