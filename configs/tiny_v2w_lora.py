"""The Video2World recipe on the tiny Video2World model: the V2W demo and tests.

`tiny_lora`'s sizes and speeds with the keys `video2world_7b_lora` adds to the Text2World recipe.
"""

from cosmos_lora.config import load_preset

config = load_preset("tiny_lora")
video2world = load_preset("video2world_7b_lora")

config.model.dit = "cosmos-lora-tiny/Cosmos-Predict1-Tiny-Video2World/model.pt"
config.model.sigma_multiplier = video2world.model.sigma_multiplier
config.model.video2world = video2world.model.video2world
