"""LoRA post-training of Cosmos-Predict1-7B-Text2World with the official defaults.

Values follow the official LoRA example (`text2world_7b_lora_example_cosmos_nemo_assets`,
cosmos-predict1 986b31a): AdamW lr 1e-4, wd 0.1, betas (0.9, 0.99), eps 1e-10, constant LR,
grad clip 1.0, bf16, text dropout 0.2, power EMA, LoRA on FA+CA q/v of all 28 blocks.
Resolution and frames are the official generation size, so inference needs no other setting.
"""

import torch

from cosmos_lora.config import L, lazy_dict
from cosmos_lora.data.dataset import VideoTextDataset
from cosmos_lora.train.schedule import lr_multiplier

config = lazy_dict(
    job=dict(
        name=None,  # derived from the hyper-parameters when not given (see cosmos_lora.train.run_name)
        dataset=None,  # COLLECTION/DOMAIN inside the datasets folder
        seed=0,
        runs_dir="outputs/runs",
    ),
    model=dict(
        checkpoints_dir="checkpoints",
        dit="Cosmos-Predict1-7B-Text2World/model.pt",
        tokenizer="Cosmos-Tokenize1-CV8x8x8-720p",
        text_encoder="google-t5/t5-11b",
        pixel_chunk_duration=121,  # frames the tokenizer encodes at once (16 latent frames)
        precision="bf16",  # base weights and autocast; LoRA weights and optimizer state stay fp32
        num_frames=121,
        resolution=[704, 1280],  # 720x1280 clips are centre-cropped to this, the official generation size
        fps=24,  # generation fps (training uses each clip's own)
        text_dropout=0.2,  # trains the unconditional branch used by classifier-free guidance
        sigma_p_mean=0.0,
        sigma_p_std=1.0,
        activation_checkpointing=1.0,  # fraction of blocks recomputed in backward (1 = all, 0 = none)
        recompute_attention=False,  # False: recomputed blocks keep their self-attention output (faster, +0.46 GB/block)
        keep_attention_blocks=None,  # N: only the first N recomputed blocks keep it (None = all; see the 14B preset)
        attention_backend="cudnn",  # cudnn: fused cuDNN attention on GPUs (fastest on Hopper); default: torch's choice
        compile=True,  # regional torch.compile of the DiT blocks on GPUs (fuses the element-wise work)
        fp8=False,  # FP8 matmuls for the frozen attention/MLP linears (Hopper/Ada GPUs; changes numerics slightly)
        latent_cache=True,  # train on <dataset>/latents/<key>/ when `cosmos-lora embed --latents` made it
        lora=dict(rank=8, scale=1.0, first_blocks=None, extra_targets=[]),
    ),
    trainer=dict(
        max_iter=1000,  # optimizer steps, not micro-batches
        epochs=None,  # if set, max_iter is computed from the dataset size
        grad_accum=1,
        grad_clip=1.0,
        log_every=10,
        ema=dict(enabled=True, sigma_rel=0.1),  # power EMA (Karras et al. 2024) of the LoRA weights
        validate_every=0,  # sample videos every N steps into <run>/samples/step_XXXXXX/ (0 = off)
        # the official loss on held-out clips at fixed noise: every N steps, at step 0 (the base model) and at
        # the end (0 = off). One pass costs 8 forwards per held-out clip (x2 with EMA): see the README
        eval_every=200,
        evaluation=dict(
            fraction=0.05,  # clips held out of training (chosen by clip name), at least min_clips; 0 = none
            min_clips=2,  # a dataset too small to spare them (<= 10% of it) trains on every clip
            dataset=None,  # COLLECTION/DOMAIN: evaluate on this dataset's clips instead; nothing is held out
            root=None,  # filled in: the folder of `dataset`
            latents_dir=None,  # filled in: its latent cache, when `embed --latents` made one
            clips=[],  # filled in: the clips evaluated (the held-out ones, or all of `dataset`)
            sigmas=8,  # noise levels: the quantiles (i + 0.5) / sigmas of the training sigma distribution
            ema=True,  # also evaluate the EMA weights (when trainer.ema is enabled)
        ),
        validation=dict(
            # generic scenes of the kind the base model already renders well, so a sample that gets
            # worse points at the LoRA; replace them with prompts of the training domain
            prompts=[
                "A robotic arm picks up a red cube from a cluttered workbench and places it into a cardboard box, "
                "in a brightly lit workshop.",
                "A car drives along a winding coastal road at sunset, filmed from a drone following it.",
            ],
            seeds=[0],  # one video per prompt and seed; the same noise as `cosmos-lora infer --seed K`
            # shorter than inference's 35: 20 x 8.7 s = about 3 min per video at 121x704x1280 on an H100
            # (benchmarks/results/2026-11-22_h100_infer_7b.json), on rank 0 while the others wait
            steps=20,
            guidance=7.0,
            ema=False,  # also sample the EMA weights (<prompt>_seed<k>_ema.mp4): twice the time
        ),
    ),
    optimizer=L(torch.optim.AdamW)(lr=1e-4, weight_decay=0.1, betas=[0.9, 0.99], eps=1e-10),
    scheduler=L(lr_multiplier)(_partial_=True, warmup_iters=0, decay="constant", max_iter="${trainer.max_iter}"),
    dataloader_train=dict(
        dataset=L(VideoTextDataset)(
            root=None,
            num_frames="${model.num_frames}",
            height="${model.resolution[0]}",
            width="${model.resolution[1]}",
            latents_dir=None,  # filled in at launch when a matching latent cache exists
        ),
        batch_size=1,  # per GPU; raise trainer.grad_accum rather than this to avoid running out of memory
        num_workers=4,
        pin_memory=True,
    ),
    checkpoint=dict(
        save_every=100,  # adapters are kept at every save; a few MB each
        keep_states=2,  # optimizer/RNG states kept for resume
    ),
)
