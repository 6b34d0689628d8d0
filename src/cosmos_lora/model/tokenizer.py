"""Cosmos-Tokenize1-CV8x8x8 video tokenizer, called as cosmos-predict1 calls it.

The checkpoint is two TorchScript files and latent statistics:
`encoder.jit` maps `[B, 3, 1+8k, H, W]` in [-1, 1] to a tuple whose element 0 is `[B, 16, 1+k, H/8, W/8]`;
`decoder.jit` maps latents back; `mean_std.pt` is `(mean, std)` with 16 channels x 16 latent
frames (channel-major); `image_mean_std.pt` holds the statistics of single images.
Videos are processed in chunks of 121 frames (16 latent frames). The official model multiplies
`encode`'s output by sigma_data = 0.5 and divides by it before `decode`; so does our pipeline.
"""

import zipfile
from pathlib import Path

import torch

from cosmos_lora.errors import UserError

LATENT_CHANNELS = 16
TEMPORAL_COMPRESSION = 8
SPATIAL_COMPRESSION = 8
TOKENIZER_FILES = ("encoder.jit", "decoder.jit", "mean_std.pt", "image_mean_std.pt")


DOWNLOAD_AGAIN = "run `cosmos-lora download` (it fetches Cosmos-Tokenize1-CV8x8x8-720p again, whole)."


def check_tokenizer_folder(folder: Path, fix: str = DOWNLOAD_AGAIN) -> None:
    """Every file there, and the TorchScript ones whole archives (an interrupted copy or download leaves
    an empty or cut file): one line naming the file, before anything loads. Reads only the archives' index."""
    folder = Path(folder)
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"The tokenizer folder {folder} lacks {', '.join(missing)}.", fix)
    for name in ("encoder.jit", "decoder.jit"):
        path = folder / name
        if path.stat().st_size == 0:
            raise UserError(f"{path} is empty.", fix)
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is damaged (not a whole TorchScript archive).", fix)


def latent_frames(frames: int) -> int:
    return 1 + (frames - 1) // TEMPORAL_COMPRESSION


class VideoTokenizer:
    def __init__(
        self,
        folder: Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        pixel_chunk_duration: int = 121,
    ):
        folder = Path(folder)
        check_tokenizer_folder(folder)
        self.device, self.dtype = torch.device(device), dtype
        self.pixel_chunk = pixel_chunk_duration
        self.latent_chunk = latent_frames(pixel_chunk_duration)
        self.encoder = self._load_jit(folder / "encoder.jit")
        self.decoder = self._load_jit(folder / "decoder.jit")
        mean, std = torch.load(folder / "mean_std.pt", map_location="cpu", weights_only=True)
        self.video_mean = mean.view(LATENT_CHANNELS, -1).to(self.device, dtype)
        self.video_std = std.view(LATENT_CHANNELS, -1).to(self.device, dtype)
        image_mean, image_std = torch.load(folder / "image_mean_std.pt", map_location="cpu", weights_only=True)
        self.image_mean = image_mean.view(1, LATENT_CHANNELS, 1, 1, 1).to(self.device, dtype)
        self.image_std = image_std.view(1, LATENT_CHANNELS, 1, 1, 1).to(self.device, dtype)

    def to(self, device: torch.device | str) -> "VideoTokenizer":
        """Moves the encoder, decoder and statistics (inference offloads them between phases)."""
        self.device = torch.device(device)
        self.encoder, self.decoder = self.encoder.to(self.device), self.decoder.to(self.device)
        for name in ("video_mean", "video_std", "image_mean", "image_std"):
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    def _load_jit(self, path: Path) -> torch.jit.ScriptModule:
        try:
            module = torch.jit.load(str(path), map_location=self.device)
        except RuntimeError as error:  # damaged inside a whole archive
            raise UserError(f"{path} cannot be loaded ({str(error).splitlines()[0][:200]}).", DOWNLOAD_AGAIN) from None
        module.eval()
        for param in module.parameters():
            param.requires_grad_(False)
        return module.to(self.dtype)

    def _video_stats(self, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, LATENT_CHANNELS, frames, 1, 1)
        return self.video_mean[:, :frames].reshape(shape), self.video_std[:, :frames].reshape(shape)

    def _chunks(self, frames: int, chunk: int, what: str) -> list[slice]:
        if frames > chunk and frames % chunk:
            raise ValueError(f"{what}: {frames} frames is not a multiple of the tokenizer's chunk of {chunk}.")
        return [slice(start, start + chunk) for start in range(0, frames, chunk)]

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """`[B, 3, T, H, W]` in [-1, 1] -> normalised latents `[B, 16, 1+(T-1)/8, H/8, W/8]` (input dtype)."""
        in_dtype = video.dtype
        video = video.to(self.device)
        if video.shape[2] == 1:
            latent = self.encoder(video.to(self.dtype))[0].to(in_dtype)
            return (latent - self.image_mean) / self.image_std
        out = []
        for chunk in self._chunks(video.shape[2], self.pixel_chunk, "encode"):
            latent = self.encoder(video[:, :, chunk].to(self.dtype))[0].to(in_dtype)
            mean, std = self._video_stats(latent.shape[2])
            out.append((latent - mean) / std)
        return torch.cat(out, dim=2)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> `[B, 3, 1+8(t-1), 8h, 8w]`, roughly in [-1, 1] (input dtype)."""
        in_dtype = latent.dtype
        latent = latent.to(self.device)
        if latent.shape[2] == 1:
            return self.decoder((latent * self.image_std + self.image_mean).to(self.dtype)).to(in_dtype)
        out = []
        for chunk in self._chunks(latent.shape[2], self.latent_chunk, "decode"):
            part = latent[:, :, chunk]
            mean, std = self._video_stats(part.shape[2])
            out.append(self.decoder((part * std + mean).to(self.dtype)).to(in_dtype))
        return torch.cat(out, dim=2)


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoded `[3, T, H, W]` in [-1, 1] -> `[T, H, W, 3]` uint8, as the official pipeline maps it."""
    return ((1 + video.float()).clamp(0, 2) / 2 * 255).to(torch.uint8).permute(1, 2, 3, 0).cpu()
