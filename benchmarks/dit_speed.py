"""Issue 8: the 7B LoRA training step and the CFG denoising step, stock path vs ours, one process.

Builds the 7B DiT with random weights on the GPU (bf16) with LoRA rank 8 on FA+CA q/v of all 28
blocks, then times, with CUDA events after a warm-up (median of 3), at 121x704x1280 (56,320 tokens):

  training step (forward + backward of the official EDM loss, as the trainer runs it):
    stock          every block recomputed, eager, torch's default attention kernel
    sac            self-attention outputs kept, the rest recomputed, eager
    compiled_full  every block recomputed, blocks compiled (the memory-saving mode)
    ours           self-attention outputs kept, the rest recomputed, blocks compiled (the default)
    fp8            ours with the blocks' frozen attention/MLP linears in FP8 (`model.fp8=true`)
  CFG step (one batch-2 forward): stock (eager) vs ours (compiled blocks, the default) vs fp8 (ours
  with FP8 linears, `infer --fp8`). FP8 swaps the linears for good, so its variants run last.

It also measures bf16 and FP8 matmuls in the same run (MFU is against bf16), records peak memory
per variant, and checks each variant's loss and LoRA gradients (training) or output (CFG) against
the first variant run, the stock path. `--profile` profiles one plain CFG forward first;
`--profile-train` profiles one training step of the last variant and splits its GPU time into
attention forward, attention backward, matrix products and the rest: where the floor of the step lies.

    python benchmarks/dit_speed.py --out dit_speed.json     # the issue-8 targets in one device call (about 9 min, estimated)
    python benchmarks/dit_speed.py --variants ours,fp8 --cfg-variants stock,ours,fp8 --out fp8.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from gpu_timing import timed

from cosmos_lora.model.dit import build_dit, configure_blocks, reset_blocks
from cosmos_lora.model.edm import LogVarHead, training_loss
from cosmos_lora.model.fp8 import use_fp8_linears
from cosmos_lora.model.lora import add_lora, lora_parameters, spec_for

TRAIN_PFLOP = 6.6  # forward + backward without base weight gradients, no recompute (shared/REFERENCE.md)
CFG_PFLOP = 2 * 2.21  # two forwards


def matmul_tflops(fp8: bool = False) -> float:
    """A plain 8192^3 matmul's rate: bf16, or FP8 with rowwise scales as `Float8Linear` runs it."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    if fp8:
        scale = torch.ones(8192, 1, device="cuda")
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
        product = lambda: torch._scaled_mm(a8, b8.t(), scale_a=scale, scale_b=scale.t(), out_dtype=torch.bfloat16)
    else:
        product = lambda: a @ b
    seconds, _ = timed(lambda: [product() for _ in range(20)])
    return 20 * 2 * 8192**3 / seconds / 1e12


def kernel_category(name: str) -> str:
    lowered = name.lower()
    if "sdpa" in lowered or "flash" in lowered or "attention" in lowered or "fmha" in lowered:
        return "attention_backward" if any(tag in lowered for tag in ("bprop", "bwd", "backward", "dgrad", "dq")) else "attention_forward"
    if any(tag in lowered for tag in ("nvjet", "gemm", "cutlass", "xmma", "matmul")):
        return "matmul"
    return "other"


def kernel_breakdown(prof) -> dict[str, float]:
    """GPU seconds per kernel category over the profiled work."""
    seconds = {"attention_forward": 0.0, "attention_backward": 0.0, "matmul": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            seconds[kernel_category(event.key)] += event.self_device_time_total / 1e6
    return {category: round(value, 3) for category, value in seconds.items()}


# Each variant is a `configure_blocks` setting; `ours` is what posttrain and infer run by default.
# `fp8` is `ours` with the blocks' frozen base linears in FP8 (`infer --fp8`, `model.fp8=true`).
TRAIN_VARIANTS = {
    "stock": dict(recompute_fraction=1.0, keep_self_attention=False, compile_blocks=False, prefer_cudnn=False),
    "sac": dict(recompute_fraction=1.0, keep_self_attention=True, compile_blocks=False, prefer_cudnn=True),
    "compiled_full": dict(recompute_fraction=1.0, keep_self_attention=False, compile_blocks=True, prefer_cudnn=True),
    "ours": dict(recompute_fraction=1.0, keep_self_attention=True, compile_blocks=True, prefer_cudnn=True),
    "fp8": dict(recompute_fraction=1.0, keep_self_attention=True, compile_blocks=True, prefer_cudnn=True),
}
CFG_VARIANTS = {
    "stock": dict(compile_blocks=False, prefer_cudnn=False),
    "ours": dict(compile_blocks=True, prefer_cudnn=True),
    "fp8": dict(compile_blocks=True, prefer_cudnn=True),
}


class Bench:
    """The 7B with LoRA and fixed inputs; times variants and compares each with the first one run."""

    def __init__(self, report: dict):
        self.report = report
        started = time.perf_counter()
        self.net = build_dit("7b", device="cuda")
        torch.nn.Module.to(self.net, dtype=torch.bfloat16)
        with torch.no_grad():
            for p in self.net.parameters():
                p.normal_(0, 0.02)
        add_lora(self.net, spec_for(28, rank=8, scale=1.0), seed=0)
        self.params = lora_parameters(self.net)
        for p in self.params.values():
            p.data.normal_(0, 0.02)  # a trained-looking adapter, so LoRA gradients flow into both factors
        self.logvar = LogVarHead().cuda()
        report["build_seconds"] = round(time.perf_counter() - started, 1)
        self.x0 = torch.randn(1, 16, 16, 88, 160, device="cuda") * 0.5
        self.eps = torch.randn_like(self.x0)
        self.sigma = torch.tensor([1.0], device="cuda")
        self.text = torch.randn(1, 512, 1024, device="cuda", dtype=torch.bfloat16)
        self.cfg_x = torch.randn(2, 16, 16, 88, 160, device="cuda", dtype=torch.bfloat16)
        self.cfg_t = torch.full((2,), 0.5, device="cuda", dtype=torch.bfloat16)
        self.cfg_text = torch.randn(2, 512, 1024, device="cuda", dtype=torch.bfloat16)
        self.cfg_reference = None  # the first CFG variant's output
        self.train_reference = None  # the first training variant's loss and LoRA gradients

    def cfg_forward(self):
        return self.net(x=self.cfg_x, timesteps=self.cfg_t, crossattn_emb=self.cfg_text, fps=24.0)

    def train_step(self):
        for p in self.params.values():
            p.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = training_loss(self.net, self.logvar, self.x0, self.sigma, self.eps, crossattn_emb=self.text, fps=24.0).loss
        loss.backward()
        return loss

    def cfg(self, variant: str) -> dict:
        reset_blocks(self.net)
        configure_blocks(self.net, **CFG_VARIANTS[variant])
        torch.cuda.reset_peak_memory_stats()
        outputs = []
        with torch.no_grad():
            seconds, times = timed(lambda: outputs.append(self.cfg_forward()))
        entry = {"s_per_step": round(seconds, 3), "times": [round(s, 3) for s in times],
                 "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1), "tflops": round(CFG_PFLOP * 1e3 / seconds, 1)}
        out = outputs[-1].float()
        if self.cfg_reference is None:
            self.cfg_reference = out
        else:
            entry["output_rel_diff_vs_first"] = relative_difference(out, self.cfg_reference)
        return entry

    def train(self, variant: str) -> dict:
        reset_blocks(self.net)
        configure_blocks(self.net, **TRAIN_VARIANTS[variant])
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        losses = []
        try:
            seconds, times = timed(lambda: losses.append(self.train_step()))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return {"error": "out of memory"}
        loss = losses[-1]  # with the LoRA gradients of the same (last timed) step
        grads = torch.cat([p.grad.float().flatten() for p in self.params.values()])
        matmul = self.report["matmul_tflops"]
        entry = {
            "s_per_step": round(seconds, 3), "times": [round(t, 3) for t in times],
            "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1),
            "tflops": round(TRAIN_PFLOP * 1e3 / seconds, 1), "mfu": round(TRAIN_PFLOP * 1e3 / seconds / matmul, 3),
            "loss": float(loss),
        }
        if self.train_reference is None:
            self.train_reference = (float(loss), grads)
        else:
            entry["loss_rel_diff_vs_first"] = abs(float(loss) - self.train_reference[0]) / abs(self.train_reference[0])
            entry["grad_rel_diff_vs_first"] = relative_difference(grads, self.train_reference[1])
        return entry

    def profile_cfg(self) -> None:
        reset_blocks(self.net)
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            self.cfg_forward()
            torch.cuda.synchronize()
        self.report["cfg_profile_top_kernels"] = prof.key_averages().table(
            sort_by="cuda_time_total", row_limit=18, max_name_column_width=70)
        print(self.report["cfg_profile_top_kernels"], flush=True)

    def profile_train(self) -> None:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            self.train_step()
            torch.cuda.synchronize()
        self.report["train_profile_seconds"] = kernel_breakdown(prof)
        self.report["train_profile_top_kernels"] = prof.key_averages().table(
            sort_by="cuda_time_total", row_limit=18, max_name_column_width=70)
        print(self.report["train_profile_top_kernels"], flush=True)


def relative_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default="stock,compiled_full,ours", help="training variants, also: sac, fp8")
    parser.add_argument("--cfg-variants", default="stock,ours", help="CFG variants, also: fp8")
    parser.add_argument("--profile", action="store_true", help="profile one plain CFG forward first")
    parser.add_argument("--profile-train", action="store_true", help="profile one training step of the last variant")
    args = parser.parse_args()
    cfg_variants = [v for v in args.cfg_variants.split(",") if v]
    train_variants = [v for v in args.variants.split(",") if v]
    torch.manual_seed(0)
    report = {"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "size": "121x704x1280, 16x88x160 latents, 56,320 tokens", "lora": "rank 8, FA+CA q/v, 28 blocks",
              "command": "python benchmarks/dit_speed.py " + " ".join(sys.argv[1:])}
    report["matmul_tflops"] = round(matmul_tflops(), 1)
    report["fp8_matmul_tflops"] = round(matmul_tflops(fp8=True), 1)
    bench = Bench(report)
    cfg, train = report.setdefault("cfg_step", {}), report.setdefault("train_step", {})
    if args.profile:
        bench.profile_cfg()

    def save():
        args.out.write_text(json.dumps(report, indent=1))

    # FP8 swaps the base linears for good, so every bf16 variant runs first
    for fp8 in (False, True):
        if fp8 and "fp8" in cfg_variants + train_variants:
            report["fp8_linears"] = use_fp8_linears(bench.net)
        for variant in (v for v in cfg_variants if (v == "fp8") == fp8):
            cfg[variant] = bench.cfg(variant)
            print("cfg", variant, json.dumps(cfg[variant]), flush=True)
            save()
        for variant in (v for v in train_variants if (v == "fp8") == fp8):
            train[variant] = bench.train(variant)
            print("train", variant, json.dumps(train[variant]), flush=True)
            save()
    if args.profile_train:
        bench.profile_train()
    save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
