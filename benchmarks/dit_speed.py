"""Issue 8: the 7B LoRA training step and the CFG denoising step, stock path vs ours, one process.

Builds the 7B DiT with random weights on the GPU (bf16) with LoRA rank 8 on FA+CA q/v of all 28
blocks, then times, with CUDA events after a warm-up (median of 3), at 121x704x1280 (56,320 tokens):

  training step (forward + backward of the official EDM loss, as the trainer runs it):
    stock          every block recomputed, eager, torch's default attention kernel
    sac            self-attention outputs kept, the rest recomputed, eager
    compiled_full  every block recomputed, blocks compiled (the memory-saving mode)
    ours           self-attention outputs kept, the rest recomputed, blocks compiled (the default)
  CFG step (one batch-2 forward): stock (eager) vs ours (compiled blocks, the default); `fp8`: ours
  with the frozen base linears of the blocks in FP8 (torchao, e4m3 with per-row scales; LoRA stays
  as it is). A lever under test, not a path of `infer`: it changes the weights, so it runs last and
  alone with training (`--variants ""`); needs the torchao wheel (0.18.0 pairs with torch 2.11).

It also measures a bf16 matmul in the same run for MFU, records peak memory per variant, and checks
that our loss and LoRA gradients match the stock path's within bf16 tolerance. `--profile-train`
profiles one training step of the last variant and splits its GPU time into attention forward,
attention backward, matrix products and the rest: where the floor of the step lies.

    python benchmarks/dit_speed.py --out dit_speed.json
"""

import argparse
import json
import time
from pathlib import Path

import torch
from gpu_timing import timed

from cosmos_lora.model.dit import build_dit, configure_blocks, reset_blocks
from cosmos_lora.model.edm import LogVarHead, training_loss
from cosmos_lora.model.lora import add_lora, lora_parameters, spec_for

TRAIN_PFLOP = 6.6  # forward + backward without base weight gradients, no recompute (shared/REFERENCE.md)
CFG_PFLOP = 2 * 2.21  # two forwards


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    seconds, _ = timed(lambda: [a @ b for _ in range(20)])
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
TRAIN_VARIANTS = {
    "stock": dict(recompute_fraction=1.0, keep_self_attention=False, compile_blocks=False, prefer_cudnn=False),
    "sac": dict(recompute_fraction=1.0, keep_self_attention=True, compile_blocks=False, prefer_cudnn=True),
    "compiled_full": dict(recompute_fraction=1.0, keep_self_attention=False, compile_blocks=True, prefer_cudnn=True),
    "ours": dict(recompute_fraction=1.0, keep_self_attention=True, compile_blocks=True, prefer_cudnn=True),
}
CFG_VARIANTS = {
    "stock": dict(compile_blocks=False, prefer_cudnn=False),
    "ours": dict(compile_blocks=True, prefer_cudnn=True),
    "fp8": dict(compile_blocks=True, prefer_cudnn=True),
}


def quantize_base_linears_fp8(net) -> int:
    """FP8 weights and activations for the attention and MLP linears of the blocks (not LoRA's factors, not
    the adaLN modulation, whose matmuls have one row per sample); returns how many."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def is_base_linear(module, fqn: str) -> bool:
        in_block = any(part in fqn for part in (".attn1.", ".attn2.", ".ff."))
        return isinstance(module, torch.nn.Linear) and in_block and "lora_" not in fqn

    count = sum(is_base_linear(m, name) for name, m in net.named_modules())
    quantize_(net, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=is_base_linear)
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default="stock,sac,compiled_full,ours")
    parser.add_argument("--cfg-variants", default="stock,ours")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-train", action="store_true")
    args = parser.parse_args()
    cfg_variants = [v for v in args.cfg_variants.split(",") if v]
    if "fp8" in cfg_variants and (cfg_variants[-1] != "fp8" or args.variants):
        parser.error('fp8 changes the weights: put it last in --cfg-variants, with --variants ""')
    torch.manual_seed(0)
    report = {"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "size": "121x704x1280, 16x88x160 latents, 56,320 tokens", "lora": "rank 8, FA+CA q/v, 28 blocks"}
    report["matmul_tflops"] = round(matmul_tflops(), 1)

    started = time.perf_counter()
    net = build_dit("7b", device="cuda")
    torch.nn.Module.to(net, dtype=torch.bfloat16)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
    add_lora(net, spec_for(28, rank=8, scale=1.0), seed=0)
    for p in lora_parameters(net).values():
        p.data.normal_(0, 0.02)  # a trained-looking adapter, so LoRA gradients flow into both factors
    logvar = LogVarHead().cuda()
    report["build_seconds"] = round(time.perf_counter() - started, 1)

    x0 = torch.randn(1, 16, 16, 88, 160, device="cuda") * 0.5
    eps = torch.randn_like(x0)
    sigma = torch.tensor([1.0], device="cuda")
    text = torch.randn(1, 512, 1024, device="cuda", dtype=torch.bfloat16)
    params = lora_parameters(net)

    def step():
        for p in params.values():
            p.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = training_loss(net, logvar, x0, sigma, eps, crossattn_emb=text, fps=24.0).loss
        loss.backward()
        return loss

    cfg = {}
    x = torch.randn(2, 16, 16, 88, 160, device="cuda", dtype=torch.bfloat16)
    t = torch.full((2,), 0.5, device="cuda", dtype=torch.bfloat16)
    text2 = torch.randn(2, 512, 1024, device="cuda", dtype=torch.bfloat16)
    outputs = {}
    if args.profile:
        reset_blocks(net)
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            net(x=x, timesteps=t, crossattn_emb=text2, fps=24.0)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70)
        print(table, flush=True)
        report["cfg_profile_top_kernels"] = table
    for variant in cfg_variants:
        reset_blocks(net)
        if variant == "fp8":
            report["fp8_linears"] = quantize_base_linears_fp8(net)
        configure_blocks(net, **CFG_VARIANTS[variant])
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            seconds, times = timed(lambda: outputs.__setitem__(variant, net(x=x, timesteps=t, crossattn_emb=text2, fps=24.0)))
        cfg[variant] = {"s_per_step": round(seconds, 3), "times": [round(s, 3) for s in times],
                        "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1),
                        "tflops": round(CFG_PFLOP * 1e3 / seconds, 1)}
        print("cfg", variant, json.dumps(cfg[variant]), flush=True)
    first = next(iter(outputs), None)
    for variant, out in outputs.items():
        if variant != first:
            cfg[variant]["output_rel_diff_vs_first"] = float((out.float() - outputs[first].float()).norm() / outputs[first].float().norm())
    report["cfg_step"] = cfg
    args.out.write_text(json.dumps(report, indent=1))
    results, reference = {}, None
    for variant in filter(None, args.variants.split(",")):
        reset_blocks(net)
        configure_blocks(net, **TRAIN_VARIANTS[variant])
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            seconds, times = timed(step)
        except torch.cuda.OutOfMemoryError:
            results[variant] = {"error": "out of memory"}
            print(variant, "out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        loss = step()
        grads = torch.cat([p.grad.float().flatten() for p in params.values()])
        entry = {
            "s_per_step": round(seconds, 3), "times": [round(t, 3) for t in times],
            "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1),
            "tflops": round(TRAIN_PFLOP * 1e3 / seconds, 1), "mfu": round(TRAIN_PFLOP * 1e3 / seconds / report["matmul_tflops"], 3),
            "loss": float(loss),
        }
        if reference is None:
            reference = (float(loss), grads)
        else:
            entry["loss_rel_diff_vs_first"] = abs(float(loss) - reference[0]) / abs(reference[0])
            entry["grad_rel_diff_vs_first"] = float((grads - reference[1]).norm() / reference[1].norm())
        results[variant] = entry
        print(variant, json.dumps(entry), flush=True)
        args.out.write_text(json.dumps(report | {"train_step": results}, indent=1))
    report["train_step"] = results
    if args.profile_train:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        report["train_profile_seconds"] = kernel_breakdown(prof)
        report["train_profile_top_kernels"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18,
                                                                        max_name_column_width=70)
        print(report["train_profile_top_kernels"], flush=True)

    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
