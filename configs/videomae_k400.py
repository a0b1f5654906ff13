r"""VideoMAE ViT-B/16 pre-training on Kinetics-400: the published recipe (Tong et al., 2022).

16 frames at sampling rate 4, 224 px, tubelet 2, patch 16, tube masking 0.9, decoder 4 blocks x 384 wide x 6
heads, normalised-pixel target, AdamW (0.9, 0.95) wd 0.05, lr 1.5e-4 x batch/256 with 40 warm-up epochs and
cosine decay to 1e-5, 800 epochs at global batch 2048.

Kinetics-400 (see docs/datasets.md for preparing the CSV lists):
  python -m vidjax.main --config=configs/videomae_k400.py --workdir=/tmp/videomae_k400 \
    --config.data.train_csv=/data/k400/train.csv --config.data.eval_csv=/data/k400/val.csv \
    --config.data.root=/data/k400/videos

Other sizes: --config=configs/videomae_k400.py:variant=S/16 (S/16, B/16, L/16, H/16).

Local run on the embedded generated dataset (tiny model, no download, a few minutes on a laptop CPU):
  python -m vidjax.main --config=configs/videomae_k400.py:runlocal --workdir=/tmp/videomae_local
"""

from vidjax import config_lib
from vidjax.models import layers, videomae


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, variant="B/16", runlocal=False)
    layers.parse_variant(arg.variant)  # a typo'd variant fails here, naming itself
    config = config_lib.trainer_config()
    config.model_name = "videomae"
    config.task = "pretrain"

    config.model = videomae.default_config()
    config.model.variant = arg.variant
    config.model.num_frames = 16
    config.model.image_size = 224
    config.model.mask_ratio = 0.9
    config.model.decoder_depth = 4
    config.model.norm_pix_loss = True

    config.data = config_lib.csv_data(
        train_csv="/data/kinetics400/train.csv", eval_csv="/data/kinetics400/val.csv",
        root="/data/kinetics400/videos", num_classes=400, num_frames=16, image_size=224, sampling_rate=4)

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
        config_lib.runlocal(config, "Mu/8", peak_lr=1.5e-3)
    return config
