r"""V-JEPA 2 self-supervised pre-training: the published recipe (Assran et al., 2025; facebookresearch/vjepa2).

Source of every number: the official configs/train/vitl16/pretrain-256px-16f.yaml and cooldown-256px-64f.yaml, and
app/vjepa/train.py + app/vjepa/utils.py `init_opt` (commit c2963a4).
  model      ViT-L/16 (:variant=H/16, g/16 as published), tubelet 2, 3-D rotary positions, activation checkpointing
             (remat full); predictor 12 blocks x 384 wide x 12 heads, mask tokens zero-initialised, one per mask
             entry (2)
  data       16 frames at 4 fps (here: sampling rate 8, 4 fps of 30 fps video), 256 px, random resized crop of area
             0.3-1 and aspect 0.75-1.35, no other augmentation; per-GPU batch 24 on 128 GPUs: global batch 3,072
  masks      two multi-block entries (config.vjepa2.masks, `vidjax.data.multiblock`): 8 blocks of 15% of a frame
             and 2 of 70%, aspect 0.75-1.5, each spanning every frame; context = the rest
  loss       L1 (loss_exp 1) between the predictor's outputs and the target encoder's layer-normed features at the
             masked positions, averaged over the two mask entries
  optimizer  AdamW, betas (0.9, 0.999), eps 1e-8, weight decay 0.04 (constant; weight matrices only), no gradient
             clipping; lr warm-up from 1e-4 to 5.25e-4 over 12,000 steps (warmup 40 x ipe 300), then constant
             (`optimizer.schedule="wsd"`)
  target     EMA of the encoder, momentum 0.99925 constant (config.vjepa2.ema)
  cool-down  the published second phase (cooldown-256px-64f.yaml): 64 frames, lr linear from 5.25e-4 to 1e-6 over
             its steps; here --config.optimizer.cooldown_epochs=N decays over the run's last N epochs (for the
             published split, a second run with --config.init_from=FIRST_RUN --config.data.num_frames=64
             --config.optimizer.warmup_epochs=0 --config.optimizer.cooldown_epochs=<all of its epochs>)
The yaml's `epochs` (10 pre-training, 40 cool-down at ipe 300) are per-launch; the run length here is
--config.total_steps (default 240,000 steps, the scale of the published runs' iterations).

  python -m vidjax.main --config=configs/vjepa2.py --workdir=/tmp/vjepa2 \
    --config.data.train_csv=/data/k710/train.csv --config.data.eval_csv=/data/k400/val.csv \
    --config.data.root=/data/videos
Evaluation: an attentive probe (`vidjax.evaluators.attentive`) on the frozen target encoder's tokens, trained on the
training split's clips and scored on the eval split (eval_attentive_top1; eval_attentive_top1_init at the start).
The released weights instead: python -m vidjax.convert --from_hf facebook/vjepa2-vitl-fpc64-256 --out /tmp/vjepa2_l.

Local run on the embedded generated dataset (micro model, no download, a few minutes on a 2-core CPU):
  python -m vidjax.main --config=configs/vjepa2.py:runlocal --workdir=/tmp/vjepa2_local
Mu/4 at 2 blocks on 8 x 32 x 32 clips (token grid 4 x 8 x 8), predictor 2 x 48, batch 32, 4 epochs (256 steps),
target momentum 0.99 -> 0.999. It pre-trains without collapse: the loss goes 1.05 -> 0.35 while `target_std` stays
0.68-0.83 (tests/test_recipe_vjepa2_learns.py checks the first epoch). What it does not do at this scale is learn the
embedded dataset's classes (8 motion directions, chance 0.125): the attentive probe of the trained target encoder
ends about where the random-init one starts. The command prints (at the end, with the initial weights' figure
beside it) eval_attentive_top1_init 0.914 -> eval_attentive_top1 0.887 with jax 0.10.2 (0.930 -> 0.930 with 0.10.1,
0.906 -> 0.914 with 0.10.0: each release rounds the 256 CPU steps differently): the probe trained on all 2,048
training clips, after the runlocal's 256 steps (measured 2026-11-29; tests/test_recipe_vjepa2_learns.py runs it and
checks the README's figures). The others
measured here (probe defaults, trained on the first 512 clips, --config.evals.eval.data.num_train=512, or all
2,048, scored on the 256 eval clips; init -> trained):
  as configured: 2-frame tubelets, every clip its own look       0.578 -> 0.613 (512 clips); 0.902 -> 0.914
                                                                 (2,048, after 512 steps: --config.total_steps=512)
  as configured, probes trained on fewer clips (where pre-trained   32 clips: 0.129 -> 0.133, 0.164 -> 0.125
  features usually gain most), two probe seeds each, 256 steps      64: 0.180 -> 0.156, 0.129 -> 0.109
  (measured 2026-11-28)                                             128: 0.180 -> 0.168, 0.219 -> 0.180
  --config.model.tubelet_size=1                                  0.133 -> 0.176 (512), 0.266 -> 0.230 (2,048)
  tubelets of 1 and --config.data.synthetic_looks=1 (one look)   0.367 -> 0.453 after 256 steps (2,048),
                                                                 -> 0.211 after 512 steps
  the scene-cue clips (--config.data.synthetic_scene_cue=True,   random init 0.512 (tubelets of 1), 0.984 (of 2):
  a frame tells the motion's axis, as for VideoPrism's and       no room for a 1.5x gain
  SVT's runlocals)
  tubelets of 1 with other masks (official BlockMask keys), 256 steps, random init 0.145 (512) each (the row
  above's setting, measured again on 2026-11-27; its 0.133 was measured at an earlier commit):
    the published entries with max_temporal_keep 0.5 (the later frames always a target)            -> 0.145
    one 15% block an entry, max_temporal_keep 0.5 (mostly the future from the past)              -> 0.133
    whole frames, 2 and 4 of the 8 (spatial_scale 1, aspect 1, temporal_scale 0.25 and 0.5)      -> 0.160
    the same with --config.model.predictor_depth=1 (the encoder's tokens must carry the motion)   -> 0.148
    the published entries with --config.model.predictor_depth=1                                   -> 0.148
    whole frames with the target's momentum 0.98 -> 0.99 (a target that lags less)               -> 0.117
  tubelets of 1 on plain backgrounds (an experiment's change to the generator, not kept: only     0.266 -> 0.191
  the object varies, so the latent loss is about it)                                             (512)
  tubelets of 1 and one look                                                                      random init 0.500
                                                                                                  (512)
A 2-frame tubelet's random linear embedding already shows a token's motion (the object moves 1.6-4.8 px a frame
across 4 px patches), which the probe reads off the random tokens; with 1-frame tubelets a token holds none, and the
random encoder's attention (rotary positions) still gives the probe some. The latent loss is mostly the background
(a masked region's texture and grating, which its visible neighbours tell), the object about one token in 64 a frame;
with one look for every clip, the loss falls to 0.06 and the gain above is the largest seen, and it does not last.
Masks that leave the background easy and the object's path to predict (whole frames), and a plain background that
leaves only the object, did not make the encoder's tokens carry the motion either: at this scale the pre-trained
target encoder's probe stays at or below the random-init one's.
"""

from vidjax import config_lib
from vidjax.models import vjepa2
from vidjax.tasks import vjepa2 as vjepa2_task


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, variant="", runlocal=False)
    variant = config_lib.recipe_variant(arg, "L/16", "Mu/4")
    config = config_lib.trainer_config()
    config.model_name = "vjepa2"
    config.task = "vjepa2"

    config.model = vjepa2.default_config()
    config.model.variant = variant
    vjepa2.dims(config.model)  # a typo'd variant fails here, naming itself
    config.model.update(num_frames=16, image_size=256, remat="full", num_mask_tokens=2)
    config.vjepa2 = vjepa2_task.default_config()

    config.data = config_lib.csv_data(
        train_csv="/data/kinetics710/train.csv", eval_csv="/data/kinetics400/val.csv",
        root="/data/kinetics/videos", num_classes=400, num_frames=16, image_size=256, sampling_rate=8)
    config.data.update(train_crop="random_resized", resized_crop_area=(0.3, 1.0), resized_crop_ratio=(0.75, 1.35),
                       flip=False)

    config.batch_size = 3072
    config.total_steps = 240_000
    opt = config.optimizer
    opt.base_lr, opt.lr_batch_base = 5.25e-4, 3072
    opt.b1, opt.b2, opt.eps = 0.9, 0.999, 1e-8
    opt.weight_decay = 0.04
    opt.schedule, opt.warmup_start, opt.cooldown_epochs, opt.min_lr = "wsd", 1e-4 / 5.25e-4, 0.0, 1e-6
    opt.warmup_epochs = 12_000 * 3072 / 240_000  # 12,000 steps of a K400-sized (240k clips) epoch at batch 3,072
    config.log_every = 50
    config.eval_every = 0
    config.checkpoint_every = 2000

    if arg.runlocal:
        # The micro recipe on the embedded dataset: 8-frame clips of 32 px, patch 4, so the token grid (4, 8, 8)
        # leaves the masks room (a 15% block is about 3 x 3 of the 8 x 8 positions); 2 blocks deep.
        config_lib.runlocal(config, variant, peak_lr=1e-3, num_epochs=4)
        if not arg.variant:
            config.model.depth = 2
        config.total_steps = 0  # the epochs of runlocal
        config.model.update(predictor_width=48, predictor_depth=2, predictor_heads=3, remat="none")
        config.data.flip = False  # the embedded classes are motion directions: a flip turns them into others
        config.optimizer.update(warmup_start=0.0, cooldown_epochs=1.0, min_lr=1e-6)
        config.vjepa2.ema = (0.99, 0.999)
        config.eval_every = 0
        # The task's evaluator (the attentive probe) with its bank's size on the command line:
        # --config.evals.eval.data.num_train=512 probes with the first 512 training clips.
        config.evals = dict(eval=dict(data=dict(num_train=config.data.num_train)))
    return config
