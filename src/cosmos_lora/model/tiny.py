"""Tiny stand-ins for the official checkpoints, made locally (no hub), in the official formats.

    <checkpoints>/cosmos-lora-tiny/Cosmos-Predict1-Tiny-Text2World/model.pt   flat `net.*` + `logvar.*`
    <checkpoints>/cosmos-lora-tiny/Cosmos-Predict1-Tiny-Video2World/model.pt  the same with the condition-mask channel
    <checkpoints>/cosmos-lora-tiny/Cosmos-Tokenize1-Tiny/{encoder,decoder}.jit, mean_std.pt, image_mean_std.pt
    <checkpoints>/cosmos-lora-tiny/t5-tiny/   a T5 encoder checkpoint + tokenizer (transformers format)

They load through exactly the code that loads the real ones. The tokenizer is not random: its
first three latent channels are the mean colour of each 8x8x8 block and its decoder paints them
back, so tiny-model videos show blocky but recognisable colours.
"""

from pathlib import Path

import torch
from torch import nn

from cosmos_lora.model.checkpoint import official_state_dict
from cosmos_lora.model.dit import build_dit
from cosmos_lora.model.edm import LogVarHead
from cosmos_lora.model.tokenizer import LATENT_CHANNELS

TINY_ROOT = "cosmos-lora-tiny"
TINY_DIT = f"{TINY_ROOT}/Cosmos-Predict1-Tiny-Text2World/model.pt"
TINY_DIT_V2W = f"{TINY_ROOT}/Cosmos-Predict1-Tiny-Video2World/model.pt"
TINY_TOKENIZER = f"{TINY_ROOT}/Cosmos-Tokenize1-Tiny"
TINY_T5 = f"{TINY_ROOT}/t5-tiny"
TINY_TEXT_DIM = 32
_PATCH = 8

_CORPUS_WORDS = (
    "a an the red green blue yellow white black orange purple pink cyan magenta grey dark light circle square "
    "triangle shape ball box moves slides from left to right top bottom on background of video slowly quickly "
    "camera person car road sky water tree city street dog cat running walking playing sports game field "
    "blurry low quality distorted ugly static frame"
).split()


class _CausalEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, LATENT_CHANNELS, kernel_size=_PATCH, stride=_PATCH)

    def forward(self, video: torch.Tensor):
        padded = torch.cat([video[:, :, :1].repeat(1, 1, 7, 1, 1), video], dim=2)  # causal: 7 = patch - 1
        return self.conv(padded), (torch.zeros(1), torch.zeros(1))


class _CausalDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.deconv = nn.ConvTranspose3d(LATENT_CHANNELS, 3, kernel_size=_PATCH, stride=_PATCH)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.deconv(latent)[:, :, 7:])


def _colour_preserving_tokenizer() -> tuple[nn.Module, nn.Module]:
    generator = torch.Generator().manual_seed(0)
    encoder, decoder = _CausalEncoder(), _CausalDecoder()
    with torch.no_grad():
        encoder.conv.weight.normal_(0, 0.01, generator=generator)
        encoder.conv.bias.zero_()
        decoder.deconv.weight.zero_()
        decoder.deconv.bias.zero_()
        for channel in range(3):
            encoder.conv.weight[channel, channel] = 1 / _PATCH**3  # mean colour of the block
            decoder.deconv.weight[channel, channel] = 1.0
    return encoder, decoder


def write_tiny_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    encoder, decoder = _colour_preserving_tokenizer()
    torch.jit.script(encoder).save(str(folder / "encoder.jit"))
    torch.jit.script(decoder).save(str(folder / "decoder.jit"))
    torch.save((torch.zeros(LATENT_CHANNELS * 16), torch.full((LATENT_CHANNELS * 16,), 0.5)), folder / "mean_std.pt")
    torch.save((torch.zeros(LATENT_CHANNELS), torch.full((LATENT_CHANNELS,), 0.5)), folder / "image_mean_std.pt")


def write_tiny_dit(path: Path, seed: int = 0, size: str = "tiny") -> None:
    """A random DiT of a test size (`tiny`; `tiny14b`: the 14B's head count and RoPE; `tiny-v2w`: Video2World's
    condition-mask channel) in the official format."""
    torch.manual_seed(seed)
    net, logvar = build_dit(size), LogVarHead()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(official_state_dict(net, logvar), path)


def write_tiny_t5(folder: Path, seed: int = 0, d_model: int = TINY_TEXT_DIM) -> None:
    """A 2-layer T5 encoder; `d_model=1024` stands in for T5-11B's output width."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    specials = ["<pad>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    alphabet = [chr(c) for c in range(32, 127)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator([" ".join(_CORPUS_WORDS)] * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=tokenizer.get_vocab_size(), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    folder.mkdir(parents=True, exist_ok=True)
    T5EncoderModel(config).save_pretrained(folder)
    wrapped.save_pretrained(folder)


def write_tiny_checkpoints(checkpoints_dir: Path) -> dict[str, Path]:
    """Creates what is missing; returns the paths (relative names are TINY_*)."""
    checkpoints_dir = Path(checkpoints_dir)
    paths = {"dit": checkpoints_dir / TINY_DIT, "tokenizer": checkpoints_dir / TINY_TOKENIZER, "text_encoder": checkpoints_dir / TINY_T5,
             "dit_v2w": checkpoints_dir / TINY_DIT_V2W}
    if not paths["dit"].is_file():
        write_tiny_dit(paths["dit"])
    if not paths["dit_v2w"].is_file():
        write_tiny_dit(paths["dit_v2w"], size="tiny-v2w")
    if not (paths["tokenizer"] / "decoder.jit").is_file():
        write_tiny_tokenizer(paths["tokenizer"])
    if not (paths["text_encoder"] / "tokenizer.json").is_file():
        write_tiny_t5(paths["text_encoder"])
    return paths
