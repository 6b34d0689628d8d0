"""The official T5 embedding pickle: round trip, compatibility, refusal of code, padding."""

import os
import pickle
import pickletools
import subprocess

import numpy as np
import pytest
import torch

from cosmos_lora.data.embeddings import pad_embedding, read_t5_embedding, write_t5_embedding
from cosmos_lora.errors import UserError


def random_embedding(n_tokens=7, dim=32, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n_tokens, dim)).astype(dtype)


def test_written_file_is_the_official_format_a_list_of_one_float16_array(tmp_path):
    emb = random_embedding()
    path = tmp_path / "t5_xxl" / "clip.pickle"
    write_t5_embedding(path, emb)
    with open(path, "rb") as f:
        raw = pickle.load(f)  # what the official loader does
    assert isinstance(raw, list) and len(raw) == 1
    assert raw[0].dtype == np.float16 and raw[0].shape == (7, 32)
    assert [p.name for p in path.parent.iterdir()] == ["clip.pickle"]  # no temporary file left


def test_written_file_names_only_globals_that_numpy_1_26_can_load(tmp_path):
    # Protocol 5 would name numpy._core.numeric._frombuffer, which numpy 1.26 lacks; the official
    # environment may still run numpy 1.x, and datasets must load there unchanged.
    write_t5_embedding(tmp_path / "a.pickle", random_embedding())
    ops = list(pickletools.genops((tmp_path / "a.pickle").read_bytes()))
    strings = [arg for op, arg, _ in ops if op.name == "SHORT_BINUNICODE"]
    assert "_frombuffer" not in strings and "numpy._core.numeric" not in strings
    assert sum(op.name == "STACK_GLOBAL" for op, _, _ in ops) == 3  # _reconstruct, ndarray, dtype


def test_round_trip_keeps_values_to_float16_precision(tmp_path):
    emb = random_embedding()
    write_t5_embedding(tmp_path / "a.pickle", emb)
    back = read_t5_embedding(tmp_path / "a.pickle")
    assert back.dtype == np.float16 and back.shape == emb.shape
    np.testing.assert_allclose(back.astype(np.float32), emb, atol=4e-3)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_reads_float32_arrays_pickled_with_any_protocol(tmp_path, protocol):
    emb = random_embedding(dtype=np.float32)
    (tmp_path / "a.pickle").write_bytes(pickle.dumps([emb], protocol=protocol))
    back = read_t5_embedding(tmp_path / "a.pickle")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, emb)


def test_reads_pickles_made_by_numpy_1_under_the_old_module_names(tmp_path):
    # Protocol 2 spells globals out as text, so the numpy 2 name can be swapped for the numpy 1 one.
    data = pickle.dumps([random_embedding(dtype=np.float16)], protocol=2)
    assert b"numpy._core.multiarray" in data
    (tmp_path / "old.pickle").write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    np.testing.assert_array_equal(read_t5_embedding(tmp_path / "old.pickle"), random_embedding(dtype=np.float16))


class RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsSubprocess:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.call, (["touch", str(self.marker)],)


class RunsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w')",)


@pytest.mark.parametrize("payload", [RunsShellCommand, RunsSubprocess, RunsEval])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps([random_embedding(), payload(marker)]))
    with pytest.raises(UserError, match="refusing to execute code") as info:
        read_t5_embedding(path)
    assert str(path) in info.value.problem and "cosmos-lora embed" in info.value.fix
    assert not marker.exists()


def test_malicious_pickle_names_the_global_it_refers_to(tmp_path):
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps([RunsShellCommand(tmp_path / "pwned")]))
    with pytest.raises(UserError, match=r"refers to (posix|nt)\.system"):
        read_t5_embedding(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "obj, expected",
    [
        ({"emb": 1}, "expected a list holding one numpy array"),
        ([random_embedding(), random_embedding()], "found a list of 2 items"),
        ([], "found a list of 0 items"),
        ([np.zeros(5, np.float16)], "shape"),
        ([np.zeros((3, 4), np.int64)], "int64"),
        ([np.zeros((0, 4), np.float16)], "n_tokens"),
        ([np.full((3, 4), np.nan, np.float32)], "NaN"),
    ],
)
def test_wrong_structure_is_a_user_error(tmp_path, obj, expected):
    path = tmp_path / "bad.pickle"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(UserError, match=expected) as info:
        read_t5_embedding(path)
    assert str(path) in info.value.problem


@pytest.mark.parametrize("content", [b"", b"this is not a pickle", "truncated"])
def test_unreadable_file_is_a_user_error(tmp_path, content):
    path = tmp_path / "bad.pickle"
    if content == "truncated":
        content = pickle.dumps([random_embedding()], protocol=4)[:-40]
    path.write_bytes(content)
    with pytest.raises(UserError, match="could not be read|not an official") as info:
        read_t5_embedding(path)
    assert str(path) in info.value.problem


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_t5_embedding(tmp_path / "nope.pickle")


def test_pad_embedding_zero_pads_and_masks_real_tokens():
    emb = random_embedding(n_tokens=5, dim=8, dtype=np.float16)
    padded, mask = pad_embedding(emb, max_len=12)
    assert padded.shape == (12, 8) and padded.dtype == torch.float32
    assert mask.shape == (12,) and mask.dtype == torch.int64
    torch.testing.assert_close(padded[:5], torch.from_numpy(emb.astype(np.float32)))
    assert (padded[5:] == 0).all()
    assert mask.tolist() == [1] * 5 + [0] * 7


def test_pad_embedding_truncates_long_inputs_and_defaults_to_512():
    emb = random_embedding(n_tokens=600, dim=4)
    padded, mask = pad_embedding(emb)
    assert padded.shape == (512, 4) and bool(mask.all())
    torch.testing.assert_close(padded, torch.from_numpy(emb[:512]))


def test_pad_embedding_accepts_a_bfloat16_tensor_from_the_encoder():
    emb = torch.randn(3, 4).to(torch.bfloat16)
    padded, mask = pad_embedding(emb, max_len=6)
    assert padded.dtype == torch.float32 and mask.tolist() == [1, 1, 1, 0, 0, 0]
    torch.testing.assert_close(padded[:3], emb.float())
