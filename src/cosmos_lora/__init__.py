"""cosmos-lora: LoRA post-training and inference for Cosmos-Predict1-7B-Text2World."""

__version__ = "0.1.0"
