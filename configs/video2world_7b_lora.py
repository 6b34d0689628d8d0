"""LoRA post-training of Cosmos-Predict1-7B-Video2World: the official Video2World LoRA recipe.

The official example (`video2world_7b_lora_example_cosmos_nemo_assets`, cosmos-predict1 986b31a,
training/config/video2world/experiment.py:730-828) differs from the Text2World one in what the
network is asked to do, not in the optimizer or the LoRA (FA+CA q/v of all 28 blocks, rank 8):

- each step gives the first 0, 1 or 2 latent frames of the clip as condition (uniform, one draw per
  step for the batch: `first_random_n_num_condition_t_max=2`); 0 is plain text-to-video;
- the condition frames are noised to an augment sigma with ln s_a ~ N(-3, 2) (median 0.05), which the
  network does not see; they count in the loss's mean with zero error;
- the training sigma is multiplied by 4 (`adjust_video_noise`: sqrt of the 16 latent frames), so
  ln sigma ~ N(ln 4, 1).

Two deliberate differences from the official example:
- the network keeps its learnable per-block position embedding. The official LoRA example builds its
  training network without it (a config inconsistency; its inference network has it), so the official
  recipe trains a LoRA on a network other than the one that samples. Ours trains the network that
  samples (shared/REFERENCE-video2world.md §3.8).
- EMA stays on as in the Text2World recipe (the official example turns it off to save memory; ours
  holds only the LoRA weights, a few MB). `export --format official` still writes an `ema` entry the
  official loader reads.

Whether a checkpoint is Video2World is read off its patch embedding (72 input features, 68 for
Text2World); `model.video2world` holds the recipe and must agree with it (checked before launch).
"""

from cosmos_lora.config import load_preset

config = load_preset("text2world_7b_lora")

config.model.dit = "Cosmos-Predict1-7B-Video2World/model.pt"  # the folder `download --model 7B-Video2World` fills
config.model.sigma_multiplier = 4.0  # official adjust_video_noise: sigma = 4 * exp(N(0, 1))
config.model.video2world = dict(
    condition_frames=[0, 1, 2],  # latent frames given as condition, drawn uniformly each step
    augment_sigma_p_mean=-3.0,  # ln(augment sigma) ~ N(p_mean, p_std) per clip
    augment_sigma_p_std=2.0,
)
# the eval loss is the image-to-video case (1 latent frame, as `infer --image`), its input noised to the
# official inference augment sigma: fixed, so the number moves only with the weights
config.model.video2world.eval_condition_frames = 1
config.model.video2world.eval_augment_sigma = 0.001
