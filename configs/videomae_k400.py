r"""VideoMAE ViT-B/16 pre-training on Kinetics-400: the published recipe (Tong et al., 2022).

16 frames at sampling rate 4, 224 px, tubelet 2, patch 16, tube masking 0.9, decoder 4 blocks x 384 wide x 6
heads, normalised-pixel target, AdamW (0.9, 0.95) wd 0.05, lr 1.5e-4 x batch/256 with 40 warm-up epochs and
cosine decay to 1e-5, 800 epochs at global batch 2048.

Data: the VideoMAE pipeline. Clips are decoded with the short side at 320 (the size VideoMAE's Kinetics copies
were resized to), cut by multi-scale crop (scales 1, .875, .75, .66 of the short side) to 224, and flipped.

Kinetics-400 from the official annotations (train.csv / validate.csv with label, youtube_id, time_start,
time_end): scripts/make_kinetics_lists.py turns them into `path label` lists (class ids = sorted class names, the
published checkpoints' order); docs/datasets.md walks through it. Then:
  python -m vidjax.main --config=configs/videomae_k400.py --workdir=/tmp/videomae_k400 \
    --config.data.train_csv=/data/k400/train.csv --config.data.eval_csv=/data/k400/val.csv \
    --config.data.root=/data/k400/videos
Other sources, same flags style (docs/datasets.md has one section each):
  class folders    --config.data.source=folder --config.data.train_folder=/data/k400/train ...eval_folder=...
  ArrayRecord pack python -m vidjax.data.pack --csv=/data/k400/train.csv --root=/data/k400/videos --out=/data/k400/pack
                   --config.data.source=array_record --config.data.train_pack=/data/k400/pack ...eval_pack=...
  TFDS             --config.data.source=tfds --config.data.tfds_name=NAME --config.data.tfds_data_dir=DIR
Check a dataset before a long run: python -m vidjax.data.check --config=configs/videomae_k400.py
Decoding workers: --config.data.num_workers=N (grain processes per host; by default one per host core less one).
Repeated sampling (VideoMAE V2's --num_sample): --config.data.num_samples=4 cuts four clips from each decode.
The input path's speed on a host: python -m vidjax.data.bench --config=configs/videomae_k400.py (docs/performance.md).

Other sizes: --config=configs/videomae_k400.py:variant=S/16 (S/16, B/16, L/16, H/16).

On a TPU slice add --config.model.dtype=bfloat16; whether the step fits, and libtpu's estimate of its time, come from
any Linux machine (docs/tpu.md: v5p-128 holds it in 17.6 GiB a chip, about 71 ms a step by that estimate):
  python -m vidjax.aot --config=configs/videomae_k400.py --topology=v5p-128 --config.model.dtype=bfloat16

Local run on the embedded generated dataset (tiny model, no download, a few minutes on a laptop CPU):
  python -m vidjax.main --config=configs/videomae_k400.py:runlocal --workdir=/tmp/videomae_local
"""

from vidjax import config_lib
from vidjax.models import layers, videomae


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, variant="", runlocal=False)
    variant = config_lib.recipe_variant(arg, "B/16", "Mu/8")
    layers.parse_variant(variant)  # a typo'd variant fails here, naming itself
    config = config_lib.trainer_config()
    config.model_name = "videomae"
    config.task = "pretrain"

    config.model = videomae.default_config()
    config.model.variant = variant
    config.model.num_frames = 16
    config.model.image_size = 224
    config.model.mask_ratio = 0.9
    config.model.decoder_depth = 4
    config.model.norm_pix_loss = True

    config.data = config_lib.csv_data(
        train_csv="/data/kinetics400/train.csv", eval_csv="/data/kinetics400/val.csv",
        root="/data/kinetics400/videos", num_classes=400, num_frames=16, image_size=224, sampling_rate=4)
    config.data.update(short_side=320, train_crop="multi_scale")

    config.batch_size = 2048
    config.num_epochs = 800
    config.optimizer.base_lr = 1.5e-4
    config.optimizer.b1, config.optimizer.b2 = 0.9, 0.95
    config.optimizer.weight_decay = 0.05
    config.optimizer.warmup_epochs = 40
    config.optimizer.min_lr = 1e-5
    config.log_every = 100
    config.eval_every = 5000
    config.eval_batches = 10
    config.checkpoint_every = 2000

    if arg.runlocal:
        # Same job, shrunk: micro ViT on 8 x 32 x 32 clips of the embedded dataset (no files, no download).
        config_lib.runlocal(config, variant, peak_lr=1.5e-3)
    return config
