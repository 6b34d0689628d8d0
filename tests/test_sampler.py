"""The trainer's batch stream: epoch after epoch without a new iterator, a resume continues it exactly,
and a clip that fails to load in a loader process is reported as itself."""

import itertools

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cosmos_lora.errors import UserError
from cosmos_lora.train.trainer import ClipError, EndlessDistributedSampler, _collate, _ErrorsAsValues, _next_clip_batch

CLIPS, WORLD, BATCH = 11, 2, 2  # 5 clips per rank: 2 whole batches per epoch, 1 clip left over


def per_epoch_reference(rank: int, epochs: int) -> list[int]:
    """What one DistributedSampler per epoch gives, each epoch cut to whole batches."""
    stream = []
    for epoch in range(epochs):
        sampler = DistributedSampler(range(CLIPS), num_replicas=WORLD, rank=rank, shuffle=True, seed=7, drop_last=True)
        sampler.set_epoch(epoch)
        stream += list(sampler)[: len(sampler) // BATCH * BATCH]
    return stream


def endless(rank: int, start_epoch: int = 0, start_index: int = 0) -> EndlessDistributedSampler:
    sampler = EndlessDistributedSampler(range(CLIPS), num_replicas=WORLD, rank=rank, shuffle=True, seed=7, drop_last=True,
                                        batch_size=BATCH)
    sampler.start_epoch, sampler.start_index = start_epoch, start_index
    return sampler


def test_the_stream_is_the_epochs_one_after_another_cut_to_whole_batches():
    for rank in range(WORLD):
        sampler = endless(rank)
        assert sampler.batches_per_epoch == 2
        assert list(itertools.islice(sampler, 4 * 4)) == per_epoch_reference(rank, 4)


def test_a_stream_started_mid_epoch_continues_the_same_sequence():
    whole = per_epoch_reference(0, 5)
    for epoch, batch in [(0, 1), (2, 0), (3, 1)]:
        offset = (epoch * 2 + batch) * BATCH
        resumed = list(itertools.islice(endless(0, epoch, batch * BATCH), len(whole) - offset))
        assert resumed == whole[offset:]


def test_the_ranks_never_share_a_clip_within_an_epoch():
    first_epoch = [set(itertools.islice(endless(rank), 4)) for rank in range(WORLD)]
    assert not first_epoch[0] & first_epoch[1]


def test_a_clip_error_in_a_loader_worker_arrives_whole():
    """A UserError raised in a loader process keeps its problem and fix (DataLoader alone would turn it into
    its worker's traceback text) and names only the failing clip."""
    class OneBadClip(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            if index == 2:
                raise UserError("Video clip_2.mp4 could not be decoded: moov atom not found.", "re-encode or remove it.")
            return {"latent": torch.full((1,), float(index))}

    batches = iter(DataLoader(_ErrorsAsValues(OneBadClip()), batch_size=2, num_workers=1, collate_fn=_collate))
    assert _next_clip_batch(batches)["latent"].flatten().tolist() == [0.0, 1.0]
    with pytest.raises(ClipError) as raised:
        _next_clip_batch(batches)
    assert raised.value.problem == "Video clip_2.mp4 could not be decoded: moov atom not found."
    assert raised.value.fix == "re-encode or remove it."
