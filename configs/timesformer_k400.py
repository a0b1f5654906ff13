r"""TimeSformer ViT-B/16 on Kinetics-400: the published 8x32 recipe (Bertasius et al., 2021), trained with AdamW.

Model and data as the reference (facebookresearch/TimeSformer configs/Kinetics/TimeSformer_divST_8x32_224.yaml):
divided space-time attention, 8 frames at sampling rate 32, 224 px, patch 16, LayerNorm eps 1e-6, drop path 0.1,
input statistics mean 0.45 / std 0.225 (the reference's DATA.MEAN/STD). The reference fine-tunes an ImageNet-21k
ViT-B with SGD (lr 0.005, momentum 0.9, wd 1e-4, 15 epochs, steps at 11 and 14); that image initialisation is
not part of vidjax, and vidjax's optimizer is AdamW only, so the optimisation follows the AdamW Kinetics-400
fine-tuning recipe of Video Swin Transformer (Liu et al., 2022): betas (0.9, 0.999), wd 0.05, 30 epochs with
2.5 linear warm-up epochs then cosine decay, global batch 64. Video Swin uses 3e-5 for the pre-trained backbone
and 3e-4 for the new head; vidjax has one learning rate, so the peak is 1e-4 (base_lr 4e-4 x 64/256). The
reference evaluates 1 clip x 3 crops.

Kinetics-400 (see docs/datasets.md for preparing the CSV lists):
  python -m vidjax.main --config=configs/timesformer_k400.py --workdir=/tmp/timesformer_k400 \
    --config.data.train_csv=/data/k400/train.csv --config.data.eval_csv=/data/k400/val.csv \
    --config.data.root=/data/k400/videos

The paper's attention ablation: --config=configs/timesformer_k400.py:attention=joint_space_time (or space_only,
divided_space_time). Other sizes: :variant=L/16 (any of Mu, Ti, S, B, L, H with a patch size).

Local run on the embedded generated dataset (tiny model, no download, a few minutes on a laptop CPU):
  python -m vidjax.main --config=configs/timesformer_k400.py:runlocal --workdir=/tmp/timesformer_local
"""

from vidjax import config_lib
from vidjax.models import layers, timesformer


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, variant="B/16", attention="divided_space_time", runlocal=False)
    layers.parse_variant(arg.variant)  # a typo'd variant fails here, naming itself
    if arg.attention not in timesformer.ATTENTION_TYPES:
        raise config_lib.ConfigError(f"Config argument attention={arg.attention!r} must be one of "
                                     f"{', '.join(timesformer.ATTENTION_TYPES)}.")
    config = config_lib.trainer_config()
    config.model_name = "timesformer"
    config.task = "classification"

    config.model = timesformer.default_config()
    config.model.variant = arg.variant
    config.model.attention_type = arg.attention
    config.model.head = "classification"
    config.model.num_classes = 400
    config.model.num_frames = 8
    config.model.image_size = 224
    config.model.ln_eps = 1e-6
    config.model.drop_path = 0.1
    config.model.pixel_mean = (0.45, 0.45, 0.45)
    config.model.pixel_std = (0.225, 0.225, 0.225)

    config.data = config_lib.csv_data(
        train_csv="/data/kinetics400/train.csv", eval_csv="/data/kinetics400/val.csv",
        root="/data/kinetics400/videos", num_classes=400, num_frames=8, image_size=224, sampling_rate=32)

    config.batch_size = 64
    config.num_epochs = 30
    config.optimizer.base_lr = 1e-4 * 256 / 64  # peak lr 1e-4 at batch 64
    config.optimizer.b1, config.optimizer.b2 = 0.9, 0.999
    config.optimizer.weight_decay = 0.05
    config.optimizer.warmup_epochs = 2.5
    config.optimizer.min_lr = 0.0
    config.log_every = 100
    config.eval_every = 5000
    config.eval_batches = 0
    config.checkpoint_every = 2000

    if arg.runlocal:
        # Same job, shrunk: micro ViT on 8 x 32 x 32 clips of the embedded dataset's 8 classes (no download).
        config_lib.runlocal(config, "Mu/8", peak_lr=1e-3)
    return config
