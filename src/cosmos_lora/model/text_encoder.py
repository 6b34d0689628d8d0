"""The T5 text encoder (google-t5/t5-11b's encoder, 1024-d outputs), as cosmos-predict1 uses it.

Prompts are tokenised to at most 512 tokens; the encoder's outputs past the real tokens are
zeroed. Embeddings are stored trimmed to the real token count (the official pickle format, see
`cosmos_lora.data.embeddings`) and zero-padded back to 512 with a mask when used.
"""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, T5EncoderModel
from transformers.utils import logging as transformers_logging

from cosmos_lora.data.embeddings import pad_embedding
from cosmos_lora.errors import UserError

MAX_TEXT_TOKENS = 512
T5_BATCH = 16  # prompts per T5 forward, so a long prompts file is not one huge batch


class T5TextEncoder:
    def __init__(self, folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16):
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise UserError(
                f"No T5 text encoder at {folder} (config.json missing).",
                "run `cosmos-lora download`, or pass --text-encoder with a T5 checkpoint folder.",
            )
        self.device = torch.device(device)
        transformers_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = T5EncoderModel.from_pretrained(folder, dtype=dtype).to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[np.ndarray]:
        """One float32 `[n_tokens, D]` array per prompt, holding only its real tokens."""
        batch = self.tokenizer(
            prompts, max_length=MAX_TEXT_TOKENS, padding="max_length", truncation=True, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        lengths = batch.attention_mask.sum(dim=1).tolist()
        return [hidden[i, :n].float().cpu().numpy() for i, n in enumerate(lengths)]


def embed_texts(folder: Path, texts, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every distinct text through T5 once (on `device`), as a float32 `[512, D]` CPU tensor.

    T5 is freed afterwards: the 11B encoder never stays beside the DiT."""
    texts = sorted(set(texts))
    if not texts:
        return {}
    encoder = T5TextEncoder(folder, device, dtype)
    embeddings = {}
    for start in range(0, len(texts), T5_BATCH):
        batch = texts[start : start + T5_BATCH]
        embeddings.update({text: pad_embedding(emb)[0] for text, emb in zip(batch, encoder.encode(batch))})
    del encoder
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return embeddings
