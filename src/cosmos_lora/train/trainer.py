"""The LoRA post-training loop. One `Trainer` per process; torchrun starts one process per GPU.

The constructor reads as the recipe: device, seed, data, held-out clips, validation prompts, model,
LoRA, DDP, optimizer, scheduler, EMA, checkpointer, resume. `train()` runs optimizer steps; one step
is `grad_accum` micro-batches with the DDP all-reduce only on the last one; every `eval_every` steps
(and at step 0 and the end) all ranks compute the evaluation loss; every `validate_every` steps rank
0 writes sample videos.
"""

import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from cosmos_lora.config import LazyDict, instantiate
from cosmos_lora.data.split import excluded_from_training
from cosmos_lora.errors import UserError
from cosmos_lora.model.checkpoint import base_fingerprint
from cosmos_lora.model.edm import SIGMA_DATA, TrainingCondition, sample_training_sigma, training_loss
from cosmos_lora.model.lora import adapter_summary, file_names, lora_parameters, lora_state_dict
from cosmos_lora.model.network import BlockSettings, NewLora, build_network
from cosmos_lora.model.tokenizer import VideoTokenizer
from cosmos_lora.distributed import Distributed
from cosmos_lora.run_folder import RunFolder
from cosmos_lora.train.checkpointer import Checkpointer
from cosmos_lora.train.ema import PowerEMA
from cosmos_lora.train.evaluation import Evaluator, evaluation_enabled, evaluation_summary
from cosmos_lora.train.metrics import MetricsLogger
from cosmos_lora.train.status import write_status
from cosmos_lora.train.validation import Validator

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


class EndlessDistributedSampler(DistributedSampler):
    """This rank's share, epoch after epoch (epoch e shuffled as DistributedSampler's set_epoch(e)),
    from `start_epoch`/`start_index`, each epoch cut to whole batches.

    One endless stream instead of one iterator per epoch: the loader's workers keep prefetching
    across epoch boundaries (a new iterator waited for its first clip: +5 s at 7B size), and a
    resume continues with exactly the batches the interrupted run would have seen.
    """

    def __init__(self, *args, batch_size: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches_per_epoch = self.num_samples // batch_size
        self.batch_size = batch_size
        self.start_epoch, self.start_index = 0, 0

    def __iter__(self):
        epoch, start = self.start_epoch, self.start_index
        while True:
            self.set_epoch(epoch)
            yield from list(super().__iter__())[start : self.batches_per_epoch * self.batch_size]
            epoch, start = epoch + 1, 0


class ClipError(UserError):
    """A clip that this rank could not read during training: only this rank knows of it."""


class _ErrorsAsValues(Dataset):
    """A UserError in a loader worker comes back as a value: DataLoader would re-raise it with the
    worker's traceback as its message, and without its fix."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.dataset[index]
        except UserError as error:
            return {"clip_error": (error.problem, error.fix)}


def _collate(samples: list[dict]) -> dict:
    failed = next((sample["clip_error"] for sample in samples if "clip_error" in sample), None)
    return {"clip_error": failed} if failed else default_collate(samples)


def _next_clip_batch(batches) -> dict:
    batch = next(batches)
    if "clip_error" in batch:
        raise ClipError(*batch["clip_error"])
    return batch


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """Data loader workers ignore SIGTERM/SIGINT: a launcher or Slurm signals the whole process group,
    and a worker killed mid-step would turn a clean stop-and-save into a crash."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class Trainer:
    def __init__(self, config: LazyDict, dist_info: Distributed):
        self.config, self.dist, self.device = config, dist_info, dist_info.device
        self.run_dir = Path(config.job.run_dir)
        self.dtype = PRECISIONS[config.model.precision]
        seed = config.job.seed
        self.stop_requested, self.started = False, False
        self._install_signal_handlers()  # first: a signal while loading still ends in a clean save

        # data: every rank reads its own shard, in an order fixed by the seed; held-out clips are never trained on
        held_out = excluded_from_training(config.trainer.get("evaluation"))
        self.dataset = instantiate(config.dataloader_train.dataset, **({"exclude_clips": held_out} if held_out else {}))
        self.batch_size = config.dataloader_train.batch_size
        if len(self.dataset) < self.dist.world_size * self.batch_size:
            raise UserError(
                f"{len(self.dataset)} clips cannot fill {self.dist.world_size} processes x batch {self.batch_size}.",
                "add clips, or lower --nproc or --batch-size.",
            )
        self.sampler = EndlessDistributedSampler(
            self.dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=seed, drop_last=True,
            batch_size=self.batch_size,
        )
        self.loader = DataLoader(
            _ErrorsAsValues(self.dataset), batch_size=self.batch_size, sampler=self.sampler, collate_fn=_collate,
            num_workers=config.dataloader_train.num_workers, pin_memory=config.dataloader_train.pin_memory,
            worker_init_fn=_leave_stop_signals_to_the_trainer,
        )

        self.evaluator = Evaluator(config, dist_info, self.dtype) if evaluation_enabled(config) else None
        # validation prompts: through T5 once on rank 0, before the DiT loads (T5 is freed at once)
        self.validator = Validator(config, dist_info, self.dtype) if config.trainer.validate_every else None

        # model: frozen base in the run's precision, fp32 LoRA on top
        checkpoints = Path(config.model.checkpoints_dir)
        dit_path = checkpoints / config.model.dit
        m, lora = config.model, config.model.lora
        self.net, self.logvar, self.spec, self.recomputed_blocks = build_network(
            dit_path, self.device, self.dtype,
            lora=NewLora(lora.rank, lora.scale, lora.first_blocks, tuple(lora.extra_targets), seed=seed), fp8=m.fp8,
            blocks=BlockSettings(
                recompute_fraction=m.activation_checkpointing, keep_self_attention=not m.recompute_attention,
                keep_attention_blocks=m.get("keep_attention_blocks"),  # runs saved before the key: None
                compile=m.compile, prefer_cudnn=m.attention_backend == "cudnn",
            ),
        )
        self.tokenizer = VideoTokenizer(checkpoints / m.tokenizer, self.device, self.dtype, m.pixel_chunk_duration)
        self.params = lora_parameters(self.net)
        self.model = (
            # buffers (the FP8 weights) are the same constants on every rank: no broadcast before each forward
            DistributedDataParallel(self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                    broadcast_buffers=False)
            if dist_info.enabled else self.net
        )

        self.optimizer = instantiate(config.optimizer, params=list(self.params.values()))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, instantiate(config.scheduler))
        self.ema = PowerEMA(self.params, config.trainer.ema.sigma_rel) if config.trainer.ema.enabled else None
        self.noise_generator = torch.Generator().manual_seed(seed * 1_000_003 + dist_info.rank)
        self.checkpointer = Checkpointer(
            self.run_dir, dist_info, self.spec, config.checkpoint.keep_states,
            {"base_fingerprint": base_fingerprint(dit_path), "base": config.model.dit, "video2world": self.net.video2world},
        )

        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._resume()
        self.metrics = MetricsLogger(self.run_dir, config.trainer.max_iter, self.step, dist_info.is_main,
                                     self.evaluator.columns if self.evaluator else [])
        self._log_summary()

    # -- the loop ---------------------------------------------------------------------------------

    def train(self) -> str:
        """Runs to max_iter; returns 'finished' or 'interrupted' (after saving)."""
        self.started = True  # from here on a failure is this launch's outcome (status.json)
        write_status(self.run_dir, "running", self.step, self.dist)
        self._start_data()
        max_iter, save_every = self.config.trainer.max_iter, self.config.checkpoint.save_every
        if self._evaluation_missing():  # step 0 (the base model), or a resume of a run stopped before its due one
            self.evaluate()
        while self.step < max_iter:
            started = time.perf_counter()
            loss, grad_norm, lr = self.train_step()
            self.step += 1
            loss_value, stop = self._agree(loss)  # every rank sees the same loss and stop flag
            if not math.isfinite(loss_value):
                self._fail_on_nonfinite(loss_value)
            self._log(loss_value, grad_norm, lr, time.perf_counter() - started)
            if self.step % save_every == 0 or self.step == max_iter or stop:
                self.save()
            if stop and (self.step < max_iter or self.evaluator is not None):
                # an evaluation due now (the final one too) runs when the run is resumed
                write_status(self.run_dir, "interrupted", self.step, self.dist)
                return "interrupted"
            if self.evaluator is not None and self.evaluator.due(self.step, max_iter) and not stop:
                self.evaluate()
            if self.validator is not None and self.validator.due(self.step) and not stop:
                self.validate()
        write_status(self.run_dir, "finished", self.step, self.dist)
        return "finished"

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step; returns this rank's loss, the clipped grad norm and the lr it used."""
        accum = self.config.trainer.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            batch = self._next_batch()
            sync = micro == accum - 1 or not self.dist.enabled
            with nullcontext() if sync else self.model.no_sync():
                loss = self.compute_loss(batch) / accum
                loss.backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.config.trainer.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.params, self.step + 1)
        return total, grad_norm, lr

    def compute_loss(self, batch: dict) -> torch.Tensor:
        if "latent" in batch:  # from the latent cache (`embed --latents`): no video decode or encode
            latent = batch["latent"].to(self.device, non_blocking=True).float()
        else:
            latent = self.tokenizer.encode(batch["video"].to(self.device, non_blocking=True)).float()
        x0 = latent * SIGMA_DATA
        text = batch["t5_text_embeddings"].to(self.device, non_blocking=True)
        keep = torch.rand(text.shape[0], generator=self.noise_generator) >= self.config.model.text_dropout
        text = text * keep.to(self.device, text.dtype).view(-1, 1, 1)
        m = self.config.model
        sigma = sample_training_sigma(x0.shape[0], self.noise_generator, m.sigma_p_mean, m.sigma_p_std)
        sigma = (sigma * m.get("sigma_multiplier", 1.0)).to(self.device)  # runs saved before the key: 1
        epsilon = torch.randn(x0.shape, generator=self.noise_generator).to(self.device)
        frames = self._condition_frames(x0) if self.net.video2world else None
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        with autocast:
            return training_loss(self.model, self.logvar, x0, sigma, epsilon, frames, crossattn_emb=text, fps=batch["fps"]).loss

    def _condition_frames(self, x0: torch.Tensor) -> TrainingCondition:
        """Video2World: how many of the clip's first latent frames are given (one draw for the batch, as
        the official `first_random_n`), their augment sigma (per clip) and their noise."""
        recipe = self.config.model.video2world
        choices = list(recipe.condition_frames)
        frames = choices[int(torch.randint(len(choices), (1,), generator=self.noise_generator))]
        augment_sigma = sample_training_sigma(
            x0.shape[0], self.noise_generator, recipe.augment_sigma_p_mean, recipe.augment_sigma_p_std
        )
        noise = torch.randn(x0.shape, generator=self.noise_generator).to(self.device)
        return TrainingCondition(frames, augment_sigma.to(self.device), noise)

    def evaluate(self) -> dict[str, float]:
        """The evaluation loss of the current LoRA (and EMA) on the held-out clips, on every rank together."""
        started = time.perf_counter()
        values = self.evaluator.run(self.net, self.logvar, self.tokenizer, self.params, self.ema)
        bad = next((value for value in values.values() if not math.isfinite(value)), None)
        if bad is not None:
            self._fail_on_nonfinite(bad, "The evaluation loss")
        self.metrics.log_evaluation(self.step, values, time.perf_counter() - started)
        return values

    def _evaluation_missing(self) -> bool:
        """Whether this step is due for an evaluation that metrics.csv lacks (rank 0 reads it and tells all)."""
        if self.evaluator is None or not self.evaluator.due(self.step, self.config.trainer.max_iter):
            return False
        missing = torch.tensor(0.0 if self.metrics.has_evaluation(self.step) else 1.0, device=self.device)
        if self.dist.enabled:
            dist.broadcast(missing, src=0)
        return bool(missing.item())

    def validate(self) -> Path:
        """Sample videos with the current LoRA (unwrapped from DDP: no collectives in its forward)."""
        started = time.perf_counter()
        folder = self.validator.run(self.step, self.net, self.tokenizer, self.params, self.ema)
        self.metrics.message(
            f"step {self.step}: {self.validator.videos_per_run} validation video(s) in {folder} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        return folder

    # -- data position ----------------------------------------------------------------------------

    def _start_data(self) -> None:
        """The batch stream from the current (epoch, batch_in_epoch): once per process."""
        self.sampler.start_epoch, self.sampler.start_index = self.epoch, self.batch_in_epoch * self.batch_size
        self._batches = iter(self.loader)

    def _next_batch(self) -> dict:
        batch = _next_clip_batch(self._batches)
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.sampler.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return batch

    # -- saving and resuming ----------------------------------------------------------------------

    def save(self) -> None:
        train_state = {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "lora": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "world_size": self.dist.world_size,
        }
        rng = {"torch": torch.get_rng_state(), "noise": self.noise_generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        self.checkpointer.save(
            self.step, lora_state_dict(self.net), file_names(self.ema.state_dict()) if self.ema else None, train_state, rng
        )

    def _resume(self) -> None:
        loaded = self.checkpointer.load_latest()  # refuses another process count
        if loaded is None:
            return
        state, rng = loaded
        with torch.no_grad():
            for name, tensor in state["lora"].items():
                self.params[name].copy_(tensor)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        torch.set_rng_state(rng["torch"])
        self.noise_generator.set_state(rng["noise"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    # -- reporting and stopping -------------------------------------------------------------------

    def _log(self, loss: float, grad_norm: torch.Tensor, lr: float, seconds: float) -> None:
        if self.step % self.config.trainer.log_every and self.step != self.config.trainer.max_iter:
            return
        samples = self.dist.world_size * self.batch_size * self.config.trainer.grad_accum
        gpu_gb = torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else None
        self.metrics.log(self.step, {
            "loss": loss, "lr": lr, "grad_norm": grad_norm.item(),
            "s_per_step": seconds, "samples_per_s": samples / seconds, "gpu_mem_gb": gpu_gb,
        })

    def _log_summary(self) -> None:
        cfg = self.config
        samples = self.dist.world_size * self.batch_size * cfg.trainer.grad_accum
        steps_per_epoch = len(self.dataset) // samples
        trainable = sum(p.numel() for p in self.params.values())
        height, width = cfg.model.resolution
        self.metrics.message(
            f"posttrain {self.run_dir.name}: {self.dist.world_size} process(es) x batch {self.batch_size} x accum "
            f"{cfg.trainer.grad_accum} = {samples} clips/step; {cfg.trainer.max_iter} steps "
            f"({cfg.trainer.max_iter / max(1, steps_per_epoch):.2f} epochs of {len(self.dataset)} clips); "
            f"LoRA {adapter_summary(self.spec)} ({trainable / 1e6:.2f}M params); {cfg.model.num_frames}x{height}x{width}; "
            f"{cfg.model.precision}; {self.recomputed_blocks} blocks recomputed; device {self.device}"
            + (f"; samples every {cfg.trainer.validate_every} steps" if self.validator else "")
            + evaluation_summary(cfg, self.evaluator, len(self.dataset))
            + (f"; resuming at step {self.step}" if self.step else "")
        )

    def _install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT only raise a flag: the step in flight finishes, then every rank saves and stops."""
        def request_stop(signum, frame):
            self.stop_requested = True

        self._previous_handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _agree(self, loss: torch.Tensor) -> tuple[float, bool]:
        """(mean loss over ranks, whether any rank was asked to stop): one all-reduce per step.

        Every rank must take the same decision after the same step, so a NaN on one rank or a
        signal that reached only some of them stops all of them. `.item()` is a GPU sync point.
        """
        stop = torch.tensor(1.0 if self.stop_requested else 0.0, device=self.device)
        both = torch.stack([loss.detach().float(), stop])
        if self.dist.enabled:
            dist.all_reduce(both)  # a NaN anywhere makes the sum NaN everywhere
        loss_sum, stops = both.tolist()
        return loss_sum / self.dist.world_size, stops > 0

    def _fail_on_nonfinite(self, value: float, what: str = "The loss") -> None:
        latest = RunFolder(self.run_dir).read_latest()
        last_good = f"step {latest['step']} ({self.run_dir / latest['state']})" if latest else "none (nothing saved yet)"
        raise UserError(  # the worker records it in status.json as the run's outcome
            f"{what} became {value} at step {self.step}; training stopped. Last good checkpoint: {last_good}.",
            "lower optimizer.lr or model.lora.scale and start a new run with --name NEW; the adapters saved so far "
            "stay usable.",
        )

    def close(self) -> None:
        self.metrics.close()
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
