"""LoRA merged into the official DiT checkpoint, and official checkpoints written tensor by tensor.

    W' = W + sum_i weight_i * scale_i * up_i @ down_i     (official semantics: `customization_manager`, `lora_attn`)

A 7B `model.pt` is 14.5 GB and nothing here loads it. The base is opened twice without reading its data:
on the meta device (shapes, dtypes and each tensor's byte offset in the file) and memory-mapped (only for
`torch.save`'s bookkeeping: no page is touched). The output is written in two passes:

1. `torch.save` under `torch.serialization.skip_data()` writes the whole archive, pickle and zip records,
   with holes where the tensor bytes go;
2. every hole is filled: an unchanged tensor is copied file to file (`os.copy_file_range`, inside the
   kernel), a changed one is computed in fp32, cast back, written, and dropped before the next.

Host memory is one changed tensor (plus its delta), not one checkpoint: about 200 MB for the 7B, where
`torch.load` + `torch.save` holds all 14.5 GB. As with torch's own `skip_data`, the zip CRC of tensor records
stays 0; torch is built with MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS and does not read it.
"""

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from cosmos_lora.errors import UserError
from cosmos_lora.model.checkpoint import (
    LORA_MARKER, diffusers_to_official, read_official_checkpoint, split_official_state, unwrap_container,
)
from cosmos_lora.model.sizes import OFFICIAL_MODEL, size_from_state_dict, size_name
from cosmos_lora.model.lora import LoraSpec
from cosmos_lora.files import publishing

_COPY_CHUNK = 64 << 20


@dataclass(frozen=True)
class WeightedLora:
    """One adapter to merge: peft-named tensors, its spec, and the weight it is merged with."""

    state: dict[str, torch.Tensor]
    spec: LoraSpec
    weight: float = 1.0


@dataclass(frozen=True)
class Computed:
    """An output tensor made when its bytes are written: `make(base_file)` returns it (shape and dtype as given)."""

    shape: torch.Size
    dtype: torch.dtype
    make: Callable[[BinaryIO], torch.Tensor] = field(compare=False)

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "Computed":
        return cls(tensor.shape, tensor.dtype, lambda _: tensor)


@dataclass
class BaseCheckpoint:
    """An official `model.pt` (flat, or post-trained `{"model": ...}`), open without its data in memory."""

    path: Path
    meta: dict[str, torch.Tensor]  # on the meta device; each storage knows its `_checkpoint_offset` in the file
    mapped: dict[str, torch.Tensor]  # the same tensors memory-mapped

    @classmethod
    def open(cls, path: Path) -> "BaseCheckpoint":
        path = Path(path)
        mapped = unwrap_container(read_official_checkpoint(path))
        meta = unwrap_container(torch.load(path, map_location="meta", weights_only=True))
        if "net.x_embedder.proj.1.weight" not in meta:
            raise UserError(f"{path} is not a Cosmos-Predict1 DiT checkpoint.", "pass an official model.pt as the base.")
        if lora := [k for k in meta if LORA_MARKER in k]:
            raise UserError(
                f"{path} holds LoRA tensors ({lora[0]}): it is a LoRA post-trained checkpoint, not a base.",
                "pass the released model.pt (checkpoints/Cosmos-Predict1-7B-Text2World/model.pt) as the base and this file as an adapter.",
            )
        return cls(path, meta, mapped)

    def weight_shapes(self) -> dict[str, torch.Size]:
        """The network's weights under diffusers names (for `adapter_files.check_fits`)."""
        network, _, _, _ = split_official_state(self.meta)
        return {k: v.shape for k, v in network.items()}

    def size_name(self) -> str | None:
        """'7b', '14b', 'tiny' or 'tiny14b' when the architecture is a known size."""
        return size_name(size_from_state_dict(self.meta))

    def official_model(self) -> str:
        """'7b' or '14b': the official model this checkpoint is, or stands in for (7b when unknown)."""
        return OFFICIAL_MODEL.get(self.size_name(), "7b")

    def read(self, key: str, f: BinaryIO) -> torch.Tensor:
        """One tensor read from the open file `f` into fresh memory (a mapped page would stay in our RSS)."""
        meta = self.meta[key]
        if not meta.is_contiguous():
            return self.mapped[key].contiguous()
        buffer = bytearray(meta.numel() * meta.element_size())
        f.seek(_offset(meta) + meta.storage_offset() * meta.element_size())
        if f.readinto(buffer) != len(buffer):
            raise UserError(f"{self.path} ends inside {key}: the file is truncated.", "download or export it again.")
        return torch.frombuffer(buffer, dtype=torch.uint8).view(meta.dtype).reshape(meta.shape)


def lora_deltas(loras: list[WeightedLora]) -> dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]]:
    """Official weight name -> [(up, down, weight * scale)], one entry per adapter touching it."""
    deltas: dict[str, list] = {}
    for lora in loras:
        for module in lora.spec.module_names():
            up, down = lora.state[f"{module}.lora_B.weight"], lora.state[f"{module}.lora_A.weight"]
            deltas.setdefault(diffusers_to_official(f"{module}.weight"), []).append((up, down, lora.weight * lora.spec.scale))
    return deltas


def merge_checkpoint(base: Path | BaseCheckpoint, loras: list[WeightedLora], out: Path) -> int:
    """Writes the base with the adapters merged, as a flat official checkpoint; returns how many tensors changed."""
    base = base if isinstance(base, BaseCheckpoint) else BaseCheckpoint.open(base)
    deltas = lora_deltas(loras)
    if missing := sorted(set(deltas) - set(base.meta)):
        raise UserError(f"{base.path} has no weight {missing[0]} for the LoRA to merge into.", "use the base the LoRA was trained on.")

    def merged(key: str) -> Computed:
        def make(f: BinaryIO) -> torch.Tensor:
            weight = base.read(key, f).float()
            for up, down, factor in deltas[key]:
                weight.addmm_(up.float(), down.float(), alpha=factor)
            return weight.to(base.meta[key].dtype)

        return Computed(base.meta[key].shape, base.meta[key].dtype, make)

    write_checkpoint(out, base, {key: merged(key) if key in deltas else key for key in base.meta})
    return len(deltas)


def write_official_lora(base: Path | BaseCheckpoint, lora: dict[str, torch.Tensor], out: Path) -> None:
    """A post-trained LoRA checkpoint as the official checkpointer saves one: `{"model": base + LoRA, "ema": LoRA}`.

    `lora`: tensors under official names; the EMA copy (which official inference applies) uses '-' for '.'.
    """
    base = base if isinstance(base, BaseCheckpoint) else BaseCheckpoint.open(base)
    model = {key: key for key in base.meta} | {k: Computed.of(v) for k, v in lora.items()}
    ema = {k.replace(".", "-"): Computed.of(v) for k, v in lora.items()}
    write_checkpoint(out, base, {"model": model, "ema": ema})


def write_checkpoint(out: Path, base: BaseCheckpoint, plan: dict) -> None:
    """Writes `plan` with `torch.save`'s format, atomically. Leaves: a base key (bytes copied) or a `Computed`."""
    out = Path(out)
    if out.exists() and out.resolve() == base.path.resolve():
        raise UserError(f"--out {out} is the base checkpoint itself.", "write the result to another file.")
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_space(out, base.path.stat().st_size)
    skeleton = _map(plan, lambda leaf: base.mapped[leaf] if isinstance(leaf, str) else torch.empty(leaf.shape, dtype=leaf.dtype))
    with publishing(out) as tmp:
        with torch.serialization.skip_data():
            torch.save(skeleton, tmp)
        del skeleton
        holes = torch.load(tmp, map_location="meta", weights_only=True)
        with open(base.path, "rb") as src, open(tmp, "r+b") as dst:
            _fill(plan, holes, base, src, dst)


def _fill(plan: dict, holes: dict, base: BaseCheckpoint, src: BinaryIO, dst: BinaryIO) -> None:
    copied = set()  # storages shared by several keys are copied once
    for path, leaf in _leaves(plan):
        hole = _get(holes, path)
        if isinstance(leaf, str):
            source = base.meta[leaf].untyped_storage()
            if _offset(hole) not in copied:
                if hole.untyped_storage().nbytes() != source.nbytes():
                    raise RuntimeError(f"storage of {leaf} changed size in the output: a bug")
                _copy_range(src.fileno(), dst.fileno(), _offset(base.meta[leaf]), _offset(hole), source.nbytes())
                copied.add(_offset(hole))
        else:
            tensor = leaf.make(src)
            if tensor.shape != leaf.shape or tensor.dtype != leaf.dtype:
                raise RuntimeError(f"{'.'.join(path)}: made {tuple(tensor.shape)} {tensor.dtype}, planned {tuple(leaf.shape)} {leaf.dtype}")
            _write_at(dst.fileno(), _offset(hole) + hole.storage_offset() * hole.element_size(), tensor)


def _offset(tensor: torch.Tensor) -> int:
    """Byte offset of a meta-loaded tensor's storage in its file (torch.load(map_location="meta") records it)."""
    offset = getattr(tensor.untyped_storage(), "_checkpoint_offset", None)
    if offset is None:
        raise RuntimeError(f"torch {torch.__version__} records no checkpoint offsets; cosmos-lora merge needs torch >= 2.6")
    return offset


def _copy_range(src: int, dst: int, src_offset: int, dst_offset: int, count: int) -> None:
    """Copies bytes between files inside the kernel when it can, else through a 64 MB buffer."""
    while count > 0:
        try:
            done = os.copy_file_range(src, dst, min(count, 1 << 30), src_offset, dst_offset)
        except (AttributeError, OSError):  # another filesystem on an old kernel, or not Linux
            done = 0
        if done == 0:
            chunk = os.pread(src, min(count, _COPY_CHUNK), src_offset)
            if not chunk:
                raise UserError("The base checkpoint ends early: it is truncated.", "download it again.")
            done = os.pwrite(dst, chunk, dst_offset)
        count, src_offset, dst_offset = count - done, src_offset + done, dst_offset + done


def _write_at(fd: int, offset: int, tensor: torch.Tensor) -> None:
    data = memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
    while data:
        written = os.pwrite(fd, data[: 1 << 30], offset)
        data, offset = data[written:], offset + written


def _check_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out.parent).free
    if free < needed * 1.02:
        raise UserError(
            f"{out.parent} has {free / 1e9:.1f} GB free; the checkpoint needs {needed / 1e9:.1f} GB.",
            "free some space or write --out elsewhere.",
        )


def _map(tree: dict, fn) -> dict:
    return {k: _map(v, fn) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def _leaves(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _get(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree
