"""Issue 9: the users' multi-GPU runs, with their scaling against one GPU, through the real CLI.

    posttrain  1 GPU for a few steps (baseline), then all N GPUs with `--grad-accum 2`: a save, a
               SIGTERM after it, `--resume` to the end; s/step, samples/s, peak memory, scaling
    infer      `--stages both` for P prompts x 1 seed on N GPUs vs 1 prompt on 1 GPU: videos/hour

Each phase fits one device call (`--phase world`, `posttrain-1`, `posttrain-n`, `infer-1`,
`infer-n`); the fake world (`fake_world.py`) is built when missing. `multi_gpu_session.sh` runs
them all in one go. `--world tiny` runs the same on the tiny model and CPU processes, to check the
scripts themselves.

    python benchmarks/multi_gpu.py --root /tmp/world --phase posttrain-n --nproc 8 --out posttrain_8.json
"""

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATASET = "bench/clips"
PROMPTS = [
    "A red sports car drives along a coastal road at sunset.", "A surfer rides a large wave, spray in the air.",
    "A chef slices vegetables on a wooden board in a busy kitchen.", "A drone flies over a snowy mountain ridge.",
    "A basketball player dunks in an indoor arena.", "Rain falls on a neon-lit city street at night.",
    "A horse gallops across a green meadow.", "A sailboat crosses a calm bay under clouds.",
]


def environment(root: Path) -> dict:
    return os.environ | {"COSMOS_LORA_CHECKPOINTS": str(root / "checkpoints"), "COSMOS_LORA_DATASETS": str(root / "datasets"),
                         "COSMOS_LORA_OUTPUTS": str(root / "outputs"), "PYTHONUNBUFFERED": "1"}


def cli(root: Path, *args: str) -> float:
    """Runs the CLI; its output lines are passed on with the seconds since the launch in front (where the time went)."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "cosmos_lora", *args]
    with subprocess.Popen(command, env=environment(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        for line in child.stdout:
            print(f"[{time.perf_counter() - started:6.1f} s] {line.rstrip()}", flush=True)
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, command)
    return round(time.perf_counter() - started, 1)


def make_world(root: Path, world: str) -> list[str]:
    """The dataset and checkpoints, built once (`<root>/READY`); returns the CLI options that select the model."""
    model = ["--model", "tiny"] if world == "tiny" else []
    if (root / "READY").is_file():
        return model
    if world == "tiny":
        import torch

        from cosmos_lora.data.embed import embed_dataset
        from cosmos_lora.data.synthetic import make_synthetic_dataset
        from cosmos_lora.model.tiny import TINY_T5, write_tiny_checkpoints

        write_tiny_checkpoints(root / "checkpoints")
        dataset = root / "datasets" / DATASET
        make_synthetic_dataset(dataset, 16, 17, 64, 64, fps=24, seed=0)
        embed_dataset(dataset, root / "checkpoints" / TINY_T5, torch.device("cpu"), torch.float32)
        (root / "READY").touch()
    else:
        subprocess.run([sys.executable, str(Path(__file__).with_name("fake_world.py")), "--root", str(root), "--clips", "16"],
                       check=True)
    return model


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def summarise(rows: list[dict], skip_steps: set[int]) -> dict:
    steady = [r for r in rows if int(r["step"]) not in skip_steps] or rows
    peaks = [float(r["gpu_mem_gb"]) for r in rows if r.get("gpu_mem_gb")]
    return {
        "steps": [int(r["step"]) for r in rows],
        "s_per_step_median": statistics.median(float(r["s_per_step"]) for r in steady),
        "samples_per_s_median": statistics.median(float(r["samples_per_s"]) for r in steady),
        "gpu_peak_gb_rank0": max(peaks) if peaks else None,
    }


def posttrain_one(root: Path, model: list[str], steps: int) -> dict:
    name = "baseline_1gpu"
    args = [*model, "--dataset", DATASET, "--name", name, "--nproc", "1", "--grad-accum", "2", "--max-iter", str(steps),
            "--", "trainer.log_every=1"]
    seconds = cli(root, "posttrain", *args)
    return {"command": "cosmos-lora posttrain " + " ".join(args), "wall_seconds": seconds,
            **summarise(metrics(root / "outputs" / "runs" / name), {1})}


def posttrain_n(root: Path, model: list[str], nproc: int, steps: int, save_every: int) -> dict:
    """Train, SIGTERM after the first save, resume to the end."""
    name = f"scale_{nproc}gpu"
    run_dir = root / "outputs" / "runs" / name
    args = [*model, "--dataset", DATASET, "--name", name, "--nproc", str(nproc), "--grad-accum", "2",
            "--max-iter", str(steps), "--save-every", str(save_every), "--", "trainer.log_every=1"]
    started = time.perf_counter()
    cli_process = subprocess.Popen([sys.executable, "-m", "cosmos_lora", "posttrain", *args], env=environment(root))
    while cli_process.poll() is None:
        latest = run_dir / "latest.json"
        if latest.is_file() and json.loads(latest.read_text())["step"] >= save_every:
            cli_process.send_signal(signal.SIGTERM)
            break
        time.sleep(2)
    interrupted_code = cli_process.wait()
    status = json.loads((run_dir / "status.json").read_text())
    first_launch = round(time.perf_counter() - started, 1)
    resume_args = ["--config", str(run_dir / "config.yaml"), "--resume", "--nproc", str(nproc)]
    resume_seconds = cli(root, "posttrain", *resume_args)
    rows = metrics(run_dir)
    resumed_at = status["step"] + 1
    return {
        "commands": ["cosmos-lora posttrain " + " ".join(args), "SIGTERM to the CLI after the first save",
                     "cosmos-lora posttrain " + " ".join(resume_args)],
        "interrupted": {"exit_code": interrupted_code, "status": status},
        "wall_seconds": {"first_launch": first_launch, "resume_launch": resume_seconds},
        "latest": json.loads((run_dir / "latest.json").read_text()),
        **summarise(rows, {1, resumed_at}),
    }


def infer(root: Path, model: list[str], nproc: int, prompts: list[str], steps: int, name: str) -> dict:
    args = [*model, *sum((["-p", p] for p in prompts), []), "--stages", "both", "--lora-scale", "0", "--steps", str(steps),
            "--nproc", str(nproc), "--name", name, "--lora", str(_any_adapter(root, name)), "--overwrite"]
    seconds = cli(root, "infer", *args)
    videos = len(prompts) * 2
    return {"command": "cosmos-lora infer " + " ".join(args), "videos": videos, "wall_seconds": seconds,
            "videos_per_hour": round(videos * 3600 / seconds, 2)}


def _any_adapter(root: Path, name: str) -> Path:
    """A rank-8 LoRA for the world's DiT (throughput does not depend on its values; `--lora-scale 0`)."""
    import torch

    from cosmos_lora.model.checkpoint import read_official_checkpoint, unwrap_container
    from cosmos_lora.model.dit import build_dit
    from cosmos_lora.model.sizes import size_from_state_dict
    from cosmos_lora.model.lora import save_adapter, spec_for

    dit = next(p for p in sorted((root / "checkpoints").rglob("model.pt")))
    net = build_dit(size_from_state_dict(unwrap_container(read_official_checkpoint(dit))), device="meta")
    spec = spec_for(len(net.transformer_blocks), rank=8, scale=1.0)
    state = {}
    for module in spec.module_names():
        linear = net.get_submodule(module)
        state[f"{module}.lora_A.weight"] = torch.randn(spec.rank, linear.in_features) / spec.rank
        state[f"{module}.lora_B.weight"] = torch.zeros(linear.out_features, spec.rank)
    path = root / f"adapter_{name}.safetensors"  # one per run: runs side by side must not share the file
    save_adapter(path, state, spec)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--phase", choices=["world", "posttrain-1", "posttrain-n", "infer-1", "infer-n"], required=True)
    parser.add_argument("--nproc", type=int, default=8)
    parser.add_argument("--world", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--steps", type=int, default=22)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--infer-steps", type=int, default=35)
    parser.add_argument("--prompts", type=int, default=None,
                        help="infer-n: prompts (default: one per GPU; 1: one video on all GPUs, issue 17's users' command)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model = make_world(args.root, args.world)
    report = {"phase": args.phase, "world": args.world, "date": time.strftime("%Y-%m-%d")}
    try:
        import torch

        report["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        report["gpus_visible"] = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a report without the GPU name is still a report
        pass
    if args.phase == "world":
        report["root"] = str(args.root)
    elif args.phase == "posttrain-1":
        report["posttrain"] = posttrain_one(args.root, model, steps=4)
    elif args.phase == "posttrain-n":
        report["posttrain"] = posttrain_n(args.root, model, args.nproc, args.steps, args.save_every)
    elif args.phase == "infer-1":
        report["infer"] = infer(args.root, model, 1, PROMPTS[:1], args.infer_steps, "baseline_1gpu")
    else:
        prompts = PROMPTS[: args.prompts or args.nproc]
        report["infer"] = infer(args.root, model, args.nproc, prompts, args.infer_steps,
                                f"scale_{args.nproc}gpu_{len(prompts)}prompts")
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
