"""LoRA post-training of Cosmos-Predict1-14B-Text2World: the 7B recipe on the 14B model.

The official toolkit has no 14B LoRA example (cosmos-predict1 986b31a registers LoRA for 7B only);
its LoRA recipe carried over: FA+CA q/v of all 36 blocks (`get_fa_ca_qv_lora_config(first_nblocks=36)`),
rank 8, and the optimizer, EMA and text dropout of `text2world_7b_lora`. The network's size (width
5120, 40 heads x 128, 36 blocks, RoPE extrapolation 2 on every axis) is read from the checkpoint.

Memory: one 14B training step at 121x704x1280 needs about 65 GB with every block recomputed whole;
each block that keeps its self-attention output costs about 0.5 GB more and saves about 0.1 s. All 36
would not fit an 80 GB GPU, so only the first `keep_attention_blocks` do. The value is measured with
`benchmarks/posttrain_14b.py` (benchmarks/RESULTS.md); lower it if a GPU runs out of memory.
"""

from cosmos_lora.config import load_preset

config = load_preset("text2world_7b_lora")

config.model.dit = "Cosmos-Predict1-14B-Text2World/model.pt"  # the folder `download --model 14B-Text2World` fills
config.model.activation_checkpointing = 1.0
config.model.keep_attention_blocks = 18  # the most that stays <= 76 GB on one H100 80GB: 75.8 GB, 23.3 s/step (RESULTS.md)
# 20 steps x about 12.6 s per CFG step = about 4 min per video at 121x704x1280 on an H100
config.trainer.validation.steps = 20
