r"""VideoMAE V2 pre-training with dual masking: the published recipe (Wang et al., CVPR 2023; OpenGVLab/VideoMAEv2).

As the official scripts/pretrain/vit_b_hybrid_pt.sh (`:variant=B/16`, the default) and vit_g_hybrid_pt.sh
(`:variant=g/14`) with run_mae_pretraining.py: 16 frames at sampling rate 4, 224 px, tubelet 2, tube masking 0.9
for the encoder and running-cell masking 0.5 for the decoder (it reconstructs half of the tokens; the loss covers
those of them the encoder did not see), a 4-block decoder (384 wide x 6 heads for B, 512 x 8 for g),
normalised-pixel target, four clips cut from each decoded video (`--num_sample 4`), AdamW (0.9, 0.95) wd 0.05,
cosine decay after the warm-up, multi-scale crop and flip as VideoMAE's.
- B/16: 32 GPUs x 32 videos = 1,024 videos a step (4,096 clips), lr 1e-3 x 1,024 / 256, min lr 1e-5 x 1,024 / 256,
  20 warm-up epochs, 200 epochs (the script's value; its output folder is named 800e).
- g/14: 64 GPUs x 32 videos = 2,048 videos (8,192 clips), lr 6e-4 x 2,048 / 256, gradient clipping at norm 0.02,
  activation checkpointing (`--with_checkpoint`), 30 warm-up epochs, 300 epochs.
vidjax's batch counts clips, so batch_size is videos x 4 and lr_batch_base is 4 x 256: the same peak lr and the same
videos per step. Data: the official recipe trains on UnlabeledHybrid (1.35 M clips of Kinetics-710, SSv2, AVA,
WebVid2M and Instagram); any video list works, e.g. Kinetics-400 as for configs/videomae_k400.py:
  python -m vidjax.main --config=configs/videomae_v2.py --workdir=/ckpt/videomae_v2_b16 \
    --config.data.train_csv=/data/hybrid/train.csv --config.data.eval_csv=/data/k400/val.csv \
    --config.data.root=/data/videos

ViT-g at scale. ViT-g/14 has 1.0 B encoder parameters (16 x 224 px clips: 2,048 tokens, the encoder sees 208, the
decoder 1,024). Its step fits with whole-block rematerialisation (`config.model.remat="full"`, set here for g as
`--with_checkpoint` does), the blocks as one layer scan (`config.model.scan_layers=True`: one block compiled, its
parameters stacked), bf16 compute, and the parameters and optimizer state sharded over the data-parallel devices
(`config.mesh.fsdp`):
  8x H100 host:  --config.mesh.data=1 --config.mesh.fsdp=8 --config.model.dtype=bfloat16 --config.batch_size=1024
                 (128 clips = the official 32 videos x 4 per GPU)
  v5p-128:       --config.mesh.data=8 --config.mesh.fsdp=8 --config.model.dtype=bfloat16 (64 chips, FSDP within
                 each group of 8), 128 clips per chip as above: --config.batch_size=8192 (the official 2,048 videos)
Per device, as the benchmark's memory report gives it for that 8-way FSDP step (XLA:CPU, 8 simulated devices,
compiled not run; docs/performance.md): state and batch 1.7 GiB, temporaries 31.6 GiB, 33.3 GiB in all at 128 clips
a device with remat "full" (9.8 GiB at 32 clips; without remat, 13.1 GiB already at 8 clips). Reproduce, or check
another setting, with:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m vidjax.bench --model=videomae --variant=g/14 \
    --frames=16 --size=224 --mode=pretrain --decoder_mask=run_cell --remat=full --scan_layers=true --mesh=1,8,1 \
    --dtype=bfloat16 --batch=1024 --compile_only
On the machine itself the trainer logs the same report, and checks it against the device's memory, before the first
step. For a TPU slice, libtpu compiles the step here (docs/tpu.md: v5p-128 holds the g/14 recipe at 8,192 clips in
36.6 GiB a chip, data parallel):
  python -m vidjax.aot --config=configs/videomae_v2.py:variant=g/14 --topology=v5p-128 --config.model.dtype=bfloat16

Local run on the embedded generated dataset (micro model, no download, a few minutes on a laptop CPU), and the
fine-tune from it (configs/videomae_v2_finetune.py's docstring):
  python -m vidjax.main --config=configs/videomae_v2.py:runlocal --workdir=/tmp/videomae_v2_local
"""

from vidjax import config_lib
from vidjax.models import layers, videomae

# Per size, what the official scripts set: (videos per step, base lr, warm-up epochs, epochs, grad clip, remat).
_RECIPES = {
    "B": (1024, 1e-3, 20, 200, 0.0, "none"),
    "g": (2048, 6e-4, 30, 300, 0.02, "full"),
}


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, variant="", runlocal=False)
    variant = config_lib.recipe_variant(arg, "B/16", "Mu/8")
    size, _ = layers.parse_variant(variant)  # a typo'd variant fails here, naming itself
    videos, base_lr, warmup, epochs, clip, remat = _RECIPES.get(size, _RECIPES["B"])
    config = config_lib.trainer_config()
    config.model_name = "videomae"
    config.task = "pretrain"

    config.model = videomae.default_config()
    config.model.update(variant=variant, num_frames=16, image_size=224, mask_ratio=0.9, decoder_depth=4,
                        decoder_mask_type="run_cell", decoder_mask_ratio=0.5, norm_pix_loss=True, remat=remat,
                        scan_layers=size == "g")
    if size == "H":
        config.model.decoder_width = 512  # VideoMAE V2's ViT-H decoder (VideoMAE's is 640 wide)

    config.data = config_lib.csv_data(
        train_csv="/data/kinetics400/train.csv", eval_csv="/data/kinetics400/val.csv",
        root="/data/kinetics400/videos", num_classes=400, num_frames=16, image_size=224, sampling_rate=4)
    config.data.update(short_side=320, train_crop="multi_scale", num_samples=4)

    samples = config.data.num_samples
    config.batch_size = videos * samples
    config.num_epochs = epochs
    opt = config.optimizer
    opt.base_lr, opt.lr_batch_base = base_lr, 256 * samples
    opt.b1, opt.b2, opt.weight_decay = 0.9, 0.95, 0.05
    opt.warmup_epochs = warmup
    opt.min_lr = 1e-5 * videos / 256
    opt.grad_clip = clip
    config.log_every = 100
    config.eval_every = 5000
    config.eval_batches = 10
    config.checkpoint_every = 2000

    if arg.runlocal:
        # Same job, shrunk: micro ViT on 8 x 32 x 32 clips of the embedded dataset (a 4 x 4 x 4 token grid: the
        # encoder sees 2 tokens a frame, the decoder reconstructs 8 of the 16), 512 steps as VideoMAE's runlocal.
        # One clip a video: the embedded clips are stored, not decoded, so repeated sampling saves no decoding
        # there, and its copies of one clip (it is not augmented) would only cut the videos a step sees by 4.
        config_lib.runlocal(config, variant, peak_lr=1.5e-3)
        config.model.update(remat="none", scan_layers=False)
        config.optimizer.grad_clip = 0.0
    return config
