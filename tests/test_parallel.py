"""One video on several processes (model/parallel.py): Ulysses sequence parallelism and CFG parallelism
give the latents of one process, on 4 gloo CPU processes; the layout choice and its one-line errors.

Tolerance: the split changes only the order of float32 sums (the attention over H/K heads per process,
batch-1 instead of batch-2 matmuls for CFG parallelism), about 1e-7 relative per operation. Guidance 7
multiplies a difference of the two branches by 8 each step, and a few steps add up, so the latents
(about unit scale) may differ by some 1e-6; 1e-4 is far above that and far below any real mistake (a
token at the wrong position, a head attending to the wrong tokens: differences of order 1).
"""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cosmos_lora.errors import UserError
from cosmos_lora.infer.prompts import Job
from cosmos_lora.infer.settings import InferSettings
from cosmos_lora.model.dit import build_dit
from cosmos_lora.model.parallel import SequenceParallel, VideoLayout, cfg_split, check_layout, choose_layout, make_groups, parallelize
from cosmos_lora.model.prompts import Prompt
from cosmos_lora.model.sampler import sample_latents
from cosmos_lora.model.sizes import DiTSize

# 4 heads so that 4 processes can split them; tokens 3x4x4 = 48: shards of 12 cross frame boundaries
FOUR_HEADS = DiTSize(num_attention_heads=4, attention_head_dim=16, num_layers=2, text_embed_dim=32, adaln_lora_dim=16,
                     max_size=(16, 32, 32))
LATENT = (1, 16, 3, 8, 8)
TOLERANCE = 1e-4
LAYOUTS = [VideoLayout(4, 4, False), VideoLayout(4, 4, True), VideoLayout(4, 2, False), VideoLayout(4, 2, True)]


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_dit(FOUR_HEADS).eval()
    with torch.no_grad():
        for param in net.parameters():  # the position embeddings and the zero-initialised layers too
            param.normal_(0, 0.3)
    return net


def _inputs() -> tuple[torch.Tensor, dict, dict]:
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(LATENT, generator=generator)
    cond = {"crossattn_emb": torch.randn(1, 8, 32, generator=generator), "fps": 24.0}
    uncond = {**cond, "crossattn_emb": torch.randn(1, 8, 32, generator=generator)}
    return noise, cond, uncond


def _worker(rank: int, world: int, init_file: str, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net, (noise, cond, uncond) = _network(), _inputs()
        out = {}
        for layout in LAYOUTS:  # every process creates every layout's groups, in the same order
            groups = make_groups(layout, rank)
            split = parallelize(net, groups)
            out[layout] = sample_latents(net, noise, cond, uncond, steps=3, guidance=7.0, cfg=cfg_split(groups))
            if split is not None:
                split.remove()
        x = torch.randn(2, *LATENT[1:], generator=torch.Generator().manual_seed(2))  # the layer alone, batch 2, K = 4
        split = SequenceParallel(net, dist.new_group(list(range(world))))
        text = torch.cat([cond["crossattn_emb"]] * 2)
        with torch.no_grad():
            out["forward"] = (x, net(x, torch.tensor([0.1, -0.3]), text))
            for block in net.transformer_blocks:  # compiled blocks (as infer runs on GPUs) trace the all-to-all whole
                block.forward = torch.compile(block.forward, backend="aot_eager", dynamic=False, fullgraph=True)
            out["compiled"] = net(x, torch.tensor([0.1, -0.3]), text)
        split.remove()
        out["embedded"] = _embed_in_video_groups(rank)
        results.put((rank, out))
    finally:
        dist.destroy_process_group()


def _embed_in_video_groups(rank: int) -> tuple[int, dict]:
    """`embed_prompts` in 2 video groups of 2: (T5 loads in this process, the embeddings it ends with)."""
    from cosmos_lora.infer import pipeline

    loads = []

    def t5_stand_in(folder, texts, device, dtype):  # what each process would compute: its own rank shows
        loads.append(texts)
        return {text: torch.full((4, 2), float(100 * rank + len(text))) for text in texts}

    pipeline.embed_texts = t5_stand_in  # this spawned process's own module
    groups = make_groups(VideoLayout(4, 2, True), rank)
    settings = InferSettings(out_dir=Path("out"), dit=Path("dit"), tokenizer=Path("tok"), text_encoder=Path("t5"))
    jobs = [Job(Prompt("a red square", "red", negative="blurry"), 0), Job(Prompt("a blue disc", "blue", negative="blurry"), 0)]
    embeddings = pipeline.embed_prompts(settings, jobs, torch.device("cpu"), groups)
    return len(loads), embeddings


@pytest.fixture(scope="module")
def four_processes(tmp_path_factory):
    """Each of 4 processes' latents for every layout in LAYOUTS (one spawn for all of them)."""
    init_file = str(tmp_path_factory.mktemp("rendezvous") / "init")
    return _spawn(lambda rank, results: (_worker, (rank, 4, init_file, results)), 4)


def _spawn(target_of, world: int) -> dict:
    """`world` spawned processes; `target_of(rank, queue)` gives each one's (function, args), which puts
    (rank, result) on the queue. Returns rank -> result once every process has exited cleanly."""
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=target, args=args) for target, args in (target_of(r, results) for r in range(world))]
    for process in processes:
        process.start()
    outputs = dict(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return outputs


def _reference() -> torch.Tensor:
    net, (noise, cond, uncond) = _network(), _inputs()
    return sample_latents(net, noise, cond, uncond, steps=3, guidance=7.0)


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: f"G{layout.per_video}-K{layout.sequence_size}-cfg{int(layout.cfg_parallel)}")
def test_split_videos_give_the_latents_of_one_process_on_every_process(four_processes, layout):
    reference = _reference()
    for rank, out in four_processes.items():
        assert out[layout].shape == reference.shape
        difference = (out[layout] - reference).abs().max().item()
        assert difference < TOLERANCE, (rank, difference)
        leader = rank - rank % layout.per_video
        assert torch.equal(out[layout], four_processes[leader][layout])  # the processes of a video agree bit for bit


@pytest.mark.slow
def test_the_layer_alone_returns_the_whole_network_output_on_every_process_also_compiled(four_processes):
    net = _network()
    for rank, out in four_processes.items():
        x, y = out["forward"]
        cond = _inputs()[1]["crossattn_emb"]
        with torch.no_grad():
            expected = net(x, torch.tensor([0.1, -0.3]), torch.cat([cond] * 2))
        assert y.shape == expected.shape
        assert (y - expected).abs().max().item() < TOLERANCE * expected.abs().max().item(), rank
        assert (out["compiled"] - expected).abs().max().item() < TOLERANCE * expected.abs().max().item(), rank


@pytest.mark.slow
def test_a_video_group_loads_t5_once_and_every_process_gets_the_leaders_embeddings(four_processes):
    for rank, out in four_processes.items():
        loads, embeddings = out["embedded"]
        leader = rank - rank % 2
        assert loads == (1 if rank == leader else 0), rank
        assert sorted(embeddings) == ["a blue disc", "a red square", "blurry"]
        for text, tensor in embeddings.items():
            assert torch.equal(tensor, torch.full((4, 2), float(100 * leader + len(text)))), (rank, text)


def _eight_worker(rank: int, init_file: str, results) -> None:
    """One of 8 processes making one video as an 8-GPU machine does by default (issue 20's layout)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=8)
    try:
        net, (noise, cond, uncond) = _network(), _inputs()
        layout = choose_layout(8, 1, heads=FOUR_HEADS.num_attention_heads, tokens=48)
        groups = make_groups(layout, rank)
        parallelize(net, groups)
        results.put((rank, (layout, sample_latents(net, noise, cond, uncond, steps=3, guidance=7.0, cfg=cfg_split(groups)))))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_eight_processes_make_one_video_as_cfg_branches_of_four_token_shards_with_the_latents_of_one(tmp_path):
    """What `infer --nproc 8` does with one prompt (8 GPUs are not lent to us: gloo CPU processes stand in)."""
    outputs = _spawn(lambda rank, results: (_eight_worker, (rank, str(tmp_path / "init"), results)), 8)
    reference = _reference()
    for rank, (layout, latents) in outputs.items():
        assert (layout.per_video, layout.sequence_size, layout.cfg_parallel) == (8, 4, True)
        assert (latents - reference).abs().max().item() < TOLERANCE, rank
        assert torch.equal(latents, outputs[0][1]), rank  # the 8 processes agree bit for bit


def test_a_wrong_split_is_visible():
    """The tolerance is meaningful: one token shard in the wrong place changes the output by order 1."""
    net, (noise, cond, uncond) = _network(), _inputs()
    x = noise * 3
    with torch.no_grad():
        right = net(x, torch.tensor([0.1]), cond["crossattn_emb"])
        shuffled = net(x.roll(1, dims=2), torch.tensor([0.1]), cond["crossattn_emb"]).roll(-1, dims=2)
    assert (right - shuffled).abs().max().item() > 100 * TOLERANCE


@pytest.mark.parametrize(("processes", "jobs", "expected"), [
    (4, 1, 4), (4, 2, 2), (4, 3, 2), (4, 4, 1), (4, 5, 1), (8, 1, 8), (8, 3, 4), (8, 6, 2), (2, 1, 2), (2, 3, 1), (1, 3, 1),
])
def test_few_jobs_get_many_processes_each_and_many_jobs_one(processes, jobs, expected):
    layout = choose_layout(processes, jobs, heads=32, tokens=56320)
    assert layout.per_video == expected
    assert layout.cfg_parallel == (expected % 2 == 0)


def test_the_choice_skips_splits_the_heads_or_tokens_refuse():
    assert choose_layout(4, 1, heads=2, tokens=48).per_video == 4  # CFG x 2 token shards: 2 heads suffice
    assert choose_layout(4, 1, heads=2, tokens=48, cfg_parallel=False).per_video == 2  # K = 4 > 2 heads
    assert choose_layout(3, 1, heads=32, tokens=56320).per_video == 1  # 3 shards do not divide 32 heads


@pytest.mark.parametrize(("layout", "heads", "tokens", "phrase"), [
    (VideoLayout(2, 4, True), 32, 64, "more than the 2 processes"),
    (VideoLayout(6, 4, True), 32, 64, "cannot be grouped"),
    (VideoLayout(3, 3, False), 32, 63, "do not divide the DiT's 32 attention heads"),
    (VideoLayout(8, 8, True), 2, 64, "do not divide the DiT's 2 attention heads"),
    (VideoLayout(4, 4, False), 32, 6, "do not divide the video's 6 tokens"),
])
def test_layout_errors_are_one_line_with_a_fix(layout, heads, tokens, phrase):
    with pytest.raises(UserError) as error:
        check_layout(layout, heads, tokens)
    assert phrase in error.value.problem and error.value.fix and "\n" not in str(error.value)


# -- through the CLI and torchrun --------------------------------------------------------------------

PROMPT = ["--model", "tiny", "-p", "a red square moves", "--steps", "3", "--save-latents"]


def _infer(*args: str):
    from typer.testing import CliRunner

    from cosmos_lora.cli.app import app

    return CliRunner().invoke(app, ["infer", *PROMPT, *args])


@pytest.fixture
def lora_file(cli_env, tmp_path):
    """A tiny LoRA with non-zero up-matrices (it changes the video), in our adapter format."""
    from cosmos_lora.model.checkpoint import load_official_dit
    from cosmos_lora.model.lora import add_lora, lora_state_dict, save_adapter, spec_for
    from cosmos_lora.model.tiny import TINY_DIT

    net, _ = load_official_dit(cli_env.checkpoints / TINY_DIT)
    spec = spec_for(len(net.transformer_blocks), rank=4, scale=1.0)
    add_lora(net, spec, seed=0)
    generator = torch.Generator().manual_seed(1)
    state = {k: v if ".lora_A." in k else 0.5 * torch.randn(v.shape, generator=generator) for k, v in lora_state_dict(net).items()}
    save_adapter(tmp_path / "lora.safetensors", state, spec)
    return tmp_path / "lora.safetensors"


def _outputs(out) -> tuple[dict, list]:
    from safetensors.torch import load_file

    latents = {p.relative_to(out).parts[0]: load_file(p)["latents"] for p in out.rglob("*.latents.safetensors")}
    return latents, sorted(p.relative_to(out) for p in out.rglob("*.mp4"))


@pytest.mark.slow
@pytest.mark.parametrize(("args", "split"), [
    (["--nproc", "2", "--gpus-per-video", "2", "--no-cfg-parallel"], "1 video(s) at a time on 2 each (2 token shards)"),
    (["--nproc", "4"], "1 video(s) at a time on 4 each (CFG branches x 2 token shards)"),
], ids=["tokens-split-in-2", "cfg-x-2-tokens-on-4"])
def test_one_video_on_several_processes_matches_one_process_through_the_cli(cli_env, lora_file, args, split):
    """Base and LoRA videos of one prompt (one job: the CLI gives it every process)."""
    both = ["--lora", str(lora_file), "--stages", "both"]
    assert _infer(*both, "--nproc", "1", "--name", "one").exit_code == 0
    result = _infer(*both, *args, "--name", "many")
    assert result.exit_code == 0, result.output
    assert split in result.output  # the layout the CLI chose, said before launching
    one, one_videos = _outputs(cli_env.outputs / "infer" / "one")
    many, many_videos = _outputs(cli_env.outputs / "infer" / "many")
    assert many_videos == one_videos and len(one_videos) == 3  # original, lora, compare: each written once
    assert set(many) == set(one) == {"original", "lora"}
    for stage in one:
        assert (many[stage] - one[stage]).abs().max().item() < TOLERANCE, stage
    assert (one["lora"] - one["original"]).abs().max().item() > 100 * TOLERANCE  # the LoRA is on in its stage
    (sidecar,) = (cli_env.outputs / "infer" / "many").glob("lora/*/seed_0.json")
    assert json.loads(sidecar.read_text())["parallel"].endswith(split.split(": ", 1)[-1])


@pytest.mark.parametrize(("args", "phrase"), [
    (["--nproc", "2", "--gpus-per-video", "4"], "--gpus-per-video 4 is more than the 2 processes"),
    (["--nproc", "3", "--gpus-per-video", "2"], "3 processes cannot be grouped into videos of 2"),
    (["--nproc", "4", "--gpus-per-video", "4", "--no-cfg-parallel"], "do not divide the DiT's 2 attention heads"),
    (["--nproc", "2", "--gpus-per-video", "0"], "--gpus-per-video 0 is less than 1"),
])
def test_a_split_that_cannot_work_is_one_line_before_anything_runs(cli_env, args, phrase):
    result = _infer("--stages", "original", *args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and phrase in result.stderr and "Traceback" not in result.output
    assert not (cli_env.outputs / "infer").exists()  # nothing written, no process started
