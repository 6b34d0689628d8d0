"""`embed`: batching that halves on out-of-memory, skipping valid work, sharding over torchrun processes."""

import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.data.embed import EmbedJob, HalvingBatches, LatentSettings, embed_dataset, launch_embed
from cosmos_lora.data.embeddings import read_t5_embedding
from cosmos_lora.data.latents import latent_cache_dir
from cosmos_lora.data.layout import DatasetLayout
from cosmos_lora.model.tiny import TINY_T5, TINY_TOKENIZER
TINY_DATASET = "demo/shapes"  # the tiny_world fixture's dataset (conftest.py)

def read_cache(cache):
    """{file name: (latent, metadata)} (the bytes differ: safetensors orders metadata keys at random)."""
    files = {}
    for path in sorted(cache.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            files[path.name] = (f.get_tensor("latent"), f.metadata())
    return files


class FakeEncoder:
    """Runs out of GPU memory on batches larger than `fits`; records every call."""

    def __init__(self, fits: int):
        self.fits, self.calls = fits, []

    def __call__(self, batch):
        self.calls.append(len(batch))
        if len(batch) > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch {len(batch)})")
        return [item * 10 for item in batch]


def test_out_of_memory_halves_the_batch_and_keeps_the_size_that_fits():
    encoder, halvings = FakeEncoder(fits=3), []
    batches = HalvingBatches(16, on_halve=lambda failed, now: halvings.append((failed, now)))
    results = list(batches.run(list(range(10)), encoder))
    assert encoder.calls == [10, 5, 2, 2, 2, 2, 2]  # 10 -> 5 -> 2 fits, and 2 stays
    assert halvings == [(10, 5), (5, 2)] and batches.batch_size == 2
    assert [item for batch, _ in results for item in batch] == list(range(10))  # each item once, in order
    assert [out for _, outputs in results for out in outputs] == [item * 10 for item in range(10)]
    assert list(batches.run([10, 11, 12], encoder))[0][0] == [10, 11]  # the next call starts at 2


def test_out_of_memory_at_batch_one_is_raised():
    with pytest.raises(torch.cuda.OutOfMemoryError):
        list(HalvingBatches(4).run([1, 2, 3], FakeEncoder(fits=0)))


def test_other_errors_are_not_retried():
    def broken(batch):
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        list(HalvingBatches(4).run([1, 2], broken))


def test_only_missing_or_invalid_embeddings_are_redone(roots):
    layout = DatasetLayout(roots.dataset(TINY_DATASET))
    clips = layout.clips()
    before = {c: layout.embedding(c).read_bytes() for c in clips}
    layout.embedding(clips[1]).unlink()
    layout.embedding(clips[2]).write_bytes(b"truncated")
    layout.caption(clips[3]).unlink()
    layout.embedding(clips[3]).unlink()
    summary = embed_dataset(layout.root, roots.checkpoints / TINY_T5, torch.device("cpu"), torch.float32,
                            show_progress=False)
    assert (summary.embedded, summary.skipped_existing) == (2, 5)
    assert sorted(summary.embedded_clips) == [clips[1], clips[2]]
    assert summary.missing_captions == [str(layout.caption(clips[3]))]
    for clip in (clips[1], clips[2]):
        assert layout.embedding(clip).read_bytes() == before[clip]


def test_rank_shards_partition_the_clips(roots):
    layout = DatasetLayout(roots.dataset(TINY_DATASET))
    shutil.rmtree(layout.t5_dir)
    shards = [embed_dataset(layout.root, roots.checkpoints / TINY_T5, torch.device("cpu"), torch.float32,
                            rank=rank, world_size=3, show_progress=False).embedded_clips for rank in range(3)]
    assert shards == [layout.clips()[r::3] for r in range(3)]


def test_latent_options_without_latents_are_refused(cli_env):
    result = CliRunner().invoke(app, ["embed", "--dataset", TINY_DATASET, "--frames", "17"])
    assert result.exit_code == 1 and "--frames only apply to the latent cache" in result.stderr


@pytest.mark.slow
def test_two_torchrun_processes_embed_each_clip_once_like_one_process(roots):
    root = roots.dataset(TINY_DATASET)
    layout = DatasetLayout(root)
    tokenizer = roots.checkpoints / TINY_TOKENIZER
    settings = LatentSettings(str(tokenizer), num_frames=17, height=32, width=48, batch_size=3)
    single = {c: read_t5_embedding(layout.embedding(c)) for c in layout.clips()}  # the fixture's 1-process run
    one = launch_embed(EmbedJob(str(root), str(roots.checkpoints / TINY_T5), 4, settings), nproc=1,
                       show_progress=False)
    cache = latent_cache_dir(root, tokenizer, 17, 32, 48)
    one_latents = read_cache(cache)
    shutil.rmtree(layout.t5_dir)
    shutil.rmtree(cache)

    two = launch_embed(EmbedJob(str(root), str(roots.checkpoints / TINY_T5), 4, settings), nproc=2)

    assert one.latents_encoded == 8 and len(one_latents) == 8
    assert sorted(two.embedded_clips) == layout.clips() and two.embedded == 8  # every clip once, none twice
    assert sorted(two.encoded_clips) == layout.clips() and two.latents_encoded == 8
    for clip, embedding in single.items():
        np.testing.assert_array_equal(read_t5_embedding(layout.embedding(clip)), embedding)
    two_latents = read_cache(cache)
    assert two_latents.keys() == one_latents.keys()
    for name, (latent, metadata) in one_latents.items():
        torch.testing.assert_close(two_latents[name][0], latent, rtol=0, atol=0)
        assert two_latents[name][1] == metadata
    assert (cache / "cache.json").is_file()


# ---------------------------------------------------------------- embeddings tied to their caption and encoder


def run_embed(roots, text_encoder=None):
    return CliRunner().invoke(app, ["embed", "--dataset", TINY_DATASET, "--text-encoder",
                                    str(text_encoder or roots.checkpoints / TINY_T5)])


def train_one_step(name="check"):
    """A real training command; the dataset check refuses a bad dataset before anything is written."""
    return CliRunner().invoke(app, ["posttrain", "--model", "tiny", "--dataset", TINY_DATASET, "--nproc", "1",
                                    "--max-iter", "1", "--name", name])


def dataset_check_passes(roots):
    """What `posttrain` runs before it writes the run folder (check_inputs), for a dataset that passes."""
    from cosmos_lora.config.build import build_experiment
    from cosmos_lora.distributed import Launch
    from cosmos_lora.train.checks import check_inputs

    check_inputs(build_experiment("tiny_lora", roots, TINY_DATASET, {}, [], "check", Launch(1)))
    return True


def test_a_changed_caption_is_embedded_again_and_training_refuses_it_until_then(cli_env, capsys):
    from cosmos_lora.model.text_encoder import T5TextEncoder

    layout = DatasetLayout(cli_env.dataset(TINY_DATASET))
    clips = layout.clips()
    new_caption = "a green square moves from top to bottom on a white background"
    layout.caption(clips[2]).write_text(new_caption + "\n")  # as a rerun of prepare would

    refused = train_one_step()
    assert refused.exit_code == 1
    assert (f"{layout.caption(clips[2])}: caption changed since its embedding {layout.embedding(clips[2])} was made."
            in refused.stderr)
    assert "1 problem(s)" in refused.stderr and f"cosmos-lora embed --dataset {TINY_DATASET}" in refused.stderr
    assert not (cli_env.outputs / "runs" / "check").exists()

    result = run_embed(cli_env)
    assert result.exit_code == 0, result.output
    assert "1 caption(s) embedded (1 whose caption or text encoder changed), 7 already done." in result.stderr
    expected = T5TextEncoder(cli_env.checkpoints / TINY_T5, "cpu", torch.float32).encode([new_caption])[0]
    np.testing.assert_array_equal(read_t5_embedding(layout.embedding(clips[2])), expected.astype(np.float16))
    assert dataset_check_passes(cli_env)
    assert "0 caption(s) embedded, 8 already done." in run_embed(cli_env).stderr
    assert "Note:" not in capsys.readouterr().err  # every embedding has its record


def test_another_text_encoder_of_the_same_shape_redoes_every_embedding_and_mixed_ones_are_refused(cli_env):
    from cosmos_lora.model.tiny import write_tiny_t5

    layout = DatasetLayout(cli_env.dataset(TINY_DATASET))
    other = cli_env.outputs / "t5-other"
    write_tiny_t5(other, seed=1)  # same files, names and sizes; other weights
    old = {c: (layout.embedding(c).read_bytes(), layout.embedding(c).with_suffix(".json").read_bytes())
           for c in layout.clips()}

    result = run_embed(cli_env, other)
    assert result.exit_code == 0, result.output
    assert "8 caption(s) embedded (8 whose caption or text encoder changed), 0 already done." in result.stderr
    assert all(layout.embedding(c).read_bytes() != pickle for c, (pickle, _) in old.items())
    assert "0 caption(s) embedded, 8 already done." in run_embed(cli_env, other).stderr

    first = layout.clips()[0]  # one clip back to the first encoder's embedding
    layout.embedding(first).write_bytes(old[first][0])
    layout.embedding(first).with_suffix(".json").write_bytes(old[first][1])
    refused = train_one_step()
    assert refused.exit_code == 1 and "1 problem(s)" in refused.stderr
    assert f"{layout.embedding(first)}: made by text encoder " in refused.stderr and "7 other(s) by" in refused.stderr


def test_embeddings_without_a_record_are_trained_on_with_a_note_and_embed_records_them(cli_env, capsys):
    layout = DatasetLayout(cli_env.dataset(TINY_DATASET))
    before = {c: layout.embedding(c).read_bytes() for c in layout.clips()}
    for record in layout.t5_dir.glob("*.json"):  # as the official scripts leave a dataset
        record.unlink()

    assert dataset_check_passes(cli_env)
    assert f"Note: 8 embedding(s) in {layout.t5_dir} have no record" in capsys.readouterr().err

    result = run_embed(cli_env)
    assert result.exit_code == 0, result.output
    assert "8 caption(s) embedded (8 made elsewhere, with no record), 0 already done." in result.stderr
    assert {c: layout.embedding(c).read_bytes() for c in layout.clips()} == before  # same encoder, same bytes
    assert sorted(p.stem for p in layout.t5_dir.glob("*.json")) == layout.clips()
    assert dataset_check_passes(cli_env) and "Note:" not in capsys.readouterr().err


def test_a_record_describes_only_the_pickle_it_was_written_for(cli_env):
    layout = DatasetLayout(cli_env.dataset(TINY_DATASET))
    a, b = layout.clips()[:2]
    layout.embedding(b).write_bytes(layout.embedding(a).read_bytes())  # another tool copied a's pickle over b's
    result = run_embed(cli_env)
    assert "1 caption(s) embedded (1 made elsewhere, with no record), 7 already done." in result.stderr
    assert layout.embedding(b).read_bytes() != layout.embedding(a).read_bytes()
