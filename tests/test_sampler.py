"""The trainer's batch stream: epoch after epoch without a new iterator, and a resume continues it exactly."""

import itertools

from torch.utils.data import DistributedSampler

from cosmos_lora.train.trainer import EndlessDistributedSampler

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
