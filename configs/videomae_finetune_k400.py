r"""VideoMAE ViT-B/16 fine-tuning on Kinetics-400: the published recipe (Tong et al., 2022).

As the reference's scripts/kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_1600/finetune.sh
with run_class_finetuning.py: 16 frames at sampling rate 4, 224 px, mean pooling + fc_norm, drop path 0.1,
AdamW (0.9, 0.999), wd 0.05, lr 1e-3 x batch/256 at batch 512 videos, layer-wise lr decay 0.75, 5 warm-up epochs
then cosine to 1e-6, 100 epochs, label smoothing 0.1, mixup 0.8 / cutmix 1.0 (switch 0.5), RandAugment
rand-m7-n4-mstd0.5-inc1, random erasing 0.25, random resized crop and flip, each video sampled twice per step
(repeated augmentation, num_sample 2). Test: 5 clips x 3 crops at short side 224, softmax probabilities averaged.

vidjax's batch counts clips, so 512 videos x 2 samples = batch 1024 with lr_batch_base 512 keeps the reference's
peak lr (1e-3 x 512 / 256 = 2e-3) and its videos per step.

From a vidjax pre-training run (its workdir, e.g. configs/videomae_k400.py's) or a converted checkpoint:
  python -m vidjax.main --config=configs/videomae_finetune_k400.py --workdir=/ckpt/videomae_b16_k400_ft \
    --config.init_from=/ckpt/videomae_b16_k400 \
    --config.data.train_csv=/data/k400/train.csv --config.data.eval_csv=/data/k400/val.csv \
    --config.data.root=/data/k400/videos
  python -m vidjax.convert --from_hf MCG-NJU/videomae-base --out /ckpt/videomae-base   # the published weights

Other sizes: --config=configs/videomae_finetune_k400.py:variant=L/16 (S/16, B/16, L/16, H/16; the reference
changes layer decay and drop path with size: pass --config.optimizer.layer_decay / --config.model.drop_path).

Local run: pre-train on the embedded dataset, then fine-tune from it (tiny model, a few minutes on a laptop CPU):
  python -m vidjax.main --config=configs/videomae_k400.py:runlocal --workdir=/tmp/vidjax_runlocal
  python -m vidjax.main --config=configs/videomae_finetune_k400.py:runlocal --workdir=/tmp/vidjax_ft_local \
    --config.init_from=/tmp/vidjax_runlocal
"""

from vidjax import config_lib
from vidjax.models import layers, videomae


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, variant="", runlocal=False)
    variant = config_lib.recipe_variant(arg, "B/16", "Mu/8")
    layers.parse_variant(variant)  # a typo'd variant fails here, naming itself
    config = config_lib.trainer_config()
    config.model_name = "videomae"
    config.task = "classification"

    config.model = videomae.default_config()
    config.model.update(variant=variant, num_frames=16, image_size=224, head="classification", num_classes=400,
                        use_mean_pooling=True, drop_path=0.1)

    config.data = config_lib.csv_data(
        train_csv="/data/kinetics400/train.csv", eval_csv="/data/kinetics400/val.csv",
        root="/data/kinetics400/videos", num_classes=400, num_frames=16, image_size=224, sampling_rate=4)
    config.data.update(short_side=224, train_crop="random_resized", rand_augment="rand-m7-n4-mstd0.5-inc1",
                       erase_prob=0.25, num_samples=2, test_num_clips=5, test_num_crops=3)

    config.batch_size = 1024
    config.num_epochs = 100
    opt = config.optimizer
    opt.base_lr, opt.lr_batch_base = 1e-3, 512
    opt.b1, opt.b2, opt.weight_decay = 0.9, 0.999, 0.05
    opt.warmup_epochs, opt.min_lr = 5, 1e-6
    opt.layer_decay = 0.75
    opt.label_smoothing = 0.1
    config.loss.mixup_alpha, config.loss.cutmix_alpha = 0.8, 1.0
    config.log_every = 100
    config.eval_every = 0  # the 5 x 3-view test at the end
    config.checkpoint_every = 2000

    if arg.runlocal:
        # Same job, shrunk: micro ViT on 8 x 32 x 32 clips of the embedded dataset. What a micro model needs to learn
        # 8 motion directions in about a thousand steps: mixup, label smoothing and layer decay off, a head
        # initialised at full scale (0.001 leaves it silent for hundreds of steps), a larger peak lr.
        config_lib.runlocal(config, variant, peak_lr=3e-3, num_epochs=16)
        config.model.update(drop_path=0.0, head_init_scale=1.0)
        config.optimizer.update(layer_decay=1.0, label_smoothing=0.0, warmup_epochs=0.5)
        config.loss.mixup_alpha = config.loss.cutmix_alpha = 0.0
        # From random weights this recipe stays at chance (0.09 top-1 after 1024 steps): it fine-tunes a pre-training.
        config.needs_init_from = (
            "configs/videomae_finetune_k400.py:runlocal fine-tunes a VideoMAE pre-training run, as the published "
            "recipe does (from random weights it stays at chance). Pre-train first: python -m vidjax.main "
            "--config=configs/videomae_k400.py:runlocal --workdir=/tmp/vidjax_runlocal, then add "
            "--config.init_from=/tmp/vidjax_runlocal (or set --config.needs_init_from= to train from scratch anyway).")
    return config
