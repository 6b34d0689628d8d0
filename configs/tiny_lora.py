"""The 7B recipe on the tiny model of the same architecture: the demo and the tests.

Only sizes and speeds differ from `text2world_7b_lora`: 17 frames of 64x64 (3x8x8 latents), float32
on CPU (bf16 matmuls are slow there), a higher learning rate so a few dozen steps visibly move the
LoRA, and no data-loader workers (two CPU cores).
"""

from cosmos_lora.config import load_preset

config = load_preset("text2world_7b_lora")

config.model.dit = "cosmos-lora-tiny/Cosmos-Predict1-Tiny-Text2World/model.pt"
config.model.tokenizer = "cosmos-lora-tiny/Cosmos-Tokenize1-Tiny"
config.model.text_encoder = "cosmos-lora-tiny/t5-tiny"
config.model.pixel_chunk_duration = 17
config.model.num_frames = 17
config.model.resolution = [64, 64]
config.model.precision = "fp32"
config.model.activation_checkpointing = 0.0
config.model.lora.rank = 8
config.trainer.max_iter = 40
config.trainer.log_every = 5
config.trainer.eval_every = 10
config.optimizer.lr = 2e-3
config.dataloader_train.num_workers = 0
config.dataloader_train.pin_memory = False
config.checkpoint.save_every = 20
# captions in the style of the synthetic demo dataset, which the tiny T5's vocabulary covers
config.trainer.validation.prompts = [
    "a red circle moves from left to right on a dark blue background",
    "a yellow square moves from top to bottom on a black background",
]
