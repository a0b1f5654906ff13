r"""VideoPrism (Zhao et al., ICML 2024; google-deepmind/videoprism) trained three ways, which the official code, an
inference release, does not do. `recipe=` chooses:

  pooler       (default) the official colab's recipe: the VideoPrism encoder frozen, an attention-pooling classifier
               (the pooler, its norm and a linear head; `config.model.freeze_encoder`) trained on it
  finetune     full fine-tuning as a classifier with the house classification recipe: layer-wise lr decay 0.75, drop
               path 0.1, mixup 0.8 / cutmix 1.0, label smoothing 0.1, RandAugment and random erasing (the VideoMAE
               fine-tuning values, vidjax's choice for VideoPrism; no fine-tuning recipe is published)
  contrastive  video-text contrastive training or fine-tuning of the video-text model (head "clip"): symmetric
               InfoNCE over the global batch with a learned temperature (`vidjax.tasks.contrastive`), as
               VideoPrism's first stage; evaluated by text-to-video retrieval (eval_recall_at_1/5/10)

The encoder is VideoPrism B/18 at 16 frames x 288 px (`:variant=L/18` with --config.model.num_frames=8 for L, as
published). The classifier and contrastive recipes start from a converted checkpoint (transformers' VideoPrism
classes, pip install 'vidjax[torch]'):
  python -m vidjax.convert --from_hf HF_VIDEOPRISM_FOLDER_OR_HUB_NAME --out /ckpt/videoprism_b
Kinetics-400 with the frozen encoder (the hyper-parameters are vidjax's choice: the colab trains on a toy set):
  python -m vidjax.main --config=configs/videoprism.py --workdir=/tmp/videoprism_pooler \
    --config.init_from=/ckpt/videoprism_b --config.data.train_csv=/data/k400/train.csv \
    --config.data.eval_csv=/data/k400/val.csv --config.data.root=/data/k400/videos
Fine-tuning all of it: --config=configs/videoprism.py:recipe=finetune, the same flags.
Contrastive fine-tuning of a converted video-text model on a caption list (csv with `path` and a ';'-separated caption
column), with the checkpoint's own tokenizer:
  python -m vidjax.main --config=configs/videoprism.py:recipe=contrastive --workdir=/tmp/videoprism_clip \
    --config.init_from=/ckpt/videoprism_lvt_b --config.data.tokenizer=/ckpt/videoprism_lvt_b/tokenizer \
    --config.data.train_csv=/data/msrvtt/train.csv --config.data.eval_csv=/data/msrvtt/test.csv \
    --config.data.root=/data/msrvtt/videos --config.data.caption_column=caption
From scratch, leave out init_from and the tokenizer (a word-level one is built from the training captions).

Local runs on the embedded dataset (micro model on 8 x 24 x 24 clips, no download, a CPU):
  python -m vidjax.main --config=configs/videoprism.py:recipe=contrastive,runlocal --workdir=/tmp/videoprism_clip_local
  python -m vidjax.main --config=configs/videoprism.py:runlocal --workdir=/tmp/videoprism_pooler_local \
    --config.init_from=/tmp/videoprism_clip_local
  python -m vidjax.main --config=configs/videoprism.py:recipe=finetune,runlocal --workdir=/tmp/videoprism_ft_local
The contrastive runlocal trains on the embedded captions' clips ("a small red disc moves up and to the left quickly
over diagonal stripes", four paraphrases each); the pooler runlocal trains its classifier on that run's frozen
encoder, over the scene-cue clips (below). The micro recipes read ImageNet-normalised pixels (the published models
read [0, 1]: a checkpoint brings its own statistics): at [0, 1] the start's video embeddings are nearly one vector
(cosine 0.96 between different clips; 0.14 normalised). Measured on this 2-core CPU (eval split of 256 clips,
recall@1 chance 1/256 = 0.0039):
  contrastive, as configured (Mu/4, 24 px, temperature 0.1, peak lr 1e-3),    recall@1 0.0664 (17x chance),
  256 steps, 2.0 steps/s alone                                                 video-to-text 0.0547, median rank 11
  the same, 128 steps                                                          recall@1 0.0117, video-to-text 0.0156
  peak lr 2e-3 (24 px, normalised)                                             stuck at log(32) until step 150,
                                                                               then recall@1 0.0117; with a warm-up
                                                                               epoch (not a quarter) 0.0156
  peak lr 2e-3 at [0, 1] pixels, 32 px (the recipe before)                     recall@1 0.0273 (left log(32) at
                                                                               step 40), about twice the time
  the same at 24 px; at 32 px with temperature 0.05 and peak lr 3e-3           stuck at log(32) past step 125; 75
At peak lr 2e-3 the first steps drive every logit to one value (the loss falls from 3.56 to log(32) = 3.466 and the
gradient norm from 2.6 to 0.006) and the run then waits there; at 1e-3 it leaves log(32) by step 75. What it learns is
what the captions name and a frame shows (colour, shape, size), not the motion direction, which the classes are: a
logistic regression on its mean tokens reads the class at chance (0.133; 0.105 at 32 px). So the pooler and finetune
runlocals train on the scene-cue clips (--config.data.synthetic_scene_cue=True, as SVT's runlocal): the background's
stripes run along the class's motion axis, as Kinetics' scenes hint at their actions, so a frame tells the axis (4
ways) and only the motion which way along it; 0.5 is what the axis alone gives. 256 steps (chance 0.125):
  on the contrastive run's frozen encoder (the recipe, the commands above)     top-1 0.559, eval loss 0.739 (ln 2 =
                                                                               0.693: it reads the axis); train loss
                                                                               1.14 at step 25
  on a frozen random-init encoder (--config.needs_init_from=)                  top-1 0.504, eval loss 0.853; train
                                                                               loss 2.48 at step 25 (the stripes are
                                                                               a low-level cue random features see)
  finetune from scratch (recipe=finetune,runlocal, the third command)          top-1 0.543, eval loss 0.691
Reading the direction itself, the default clips (every clip its own look, the class only in the motion):
  pooler on the contrastive run's frozen encoder, 256 steps                     top-1 0.105 (0.113 at 32 px and [0, 1]
                                                                               pixels; 0.113 on the scene-cue clips
                                                                               with that encoder, recall@1 0.0273)
  finetune from scratch (recipe=finetune,runlocal), 256 steps                   top-1 0.133 (0.125 at 32 px)
  both with the position tables started sin-cos (TimeSformer's runlocal fix,   contrastive recall@1 0.0039,
  layers.position_init; tried, not kept)                                        finetune top-1 0.125
  finetune from scratch, 16 epochs (1,024 steps: TimeSformer's and ViViT's    top-1 0.117 / 0.113 / 0.133 / 0.141
  budget, in which they reach 0.49 and 0.93), as configured                    after 256 / 512 / 768 / 1,024 steps;
                                                                               eval loss 2.10 (ln 8 = 2.08)
  the same with the tables started sin-cos and peak lr 1e-3, stopped at 512    0.145 at 256, 0.121 at 512
  finetune from the contrastive run's encoder (--config.init_from), 256 steps  top-1 0.137
  a logistic regression on the contrastive run's output tokens (after its      top-1 0.156 (train 0.267)
  auxiliary block, mean over tokens)
In a bare training loop (AdamW, peak lr 1e-3, cosine over 400 steps, batch 32) the classifier memorises 64 training
clips (loss 0.90 by step 100), so it trains; over all 2,048 it stays at chance through 400 steps, and so do the
variants tried there (an auxiliary block before the pooler, plain grey backgrounds, the temporal blocks run before
the spatial ones), but so does the runlocal TimeSformer in that loop, which reads direction only later (0.32 after 512
steps of its 1,024): 400 steps do not tell them apart.
"""

from vidjax import config_lib
from vidjax.models import videoprism

RECIPES = ("pooler", "finetune", "contrastive")


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, recipe="pooler", variant="", runlocal=False)
    if arg.recipe not in RECIPES:
        raise config_lib.ConfigError(f"configs/videoprism.py: recipe={arg.recipe!r}; choose one of "
                                     f"{', '.join(RECIPES)}.")
    variant = config_lib.recipe_variant(arg, "B/18", "Mu/4")
    config = config_lib.trainer_config()
    config.model_name = "videoprism"
    contrastive = arg.recipe == "contrastive"
    config.task = "contrastive" if contrastive else "classification"

    config.model = videoprism.default_config()
    config.model.variant = variant
    videoprism.dims(config.model)  # a typo'd variant fails here, naming itself
    config.model.update(num_frames=16, image_size=288, num_classes=400)
    if contrastive:
        config.model.update(head="clip", vocab_size=0)  # vocab_size 0: the tokenizer's
    else:
        config.model.update(head="classification", freeze_encoder=arg.recipe == "pooler")

    if contrastive:
        config.data = config_lib.data_config(
            source="csv", num_train=0, num_eval=0, num_frames=16, image_size=288, sampling_rate=4,
            train_csv="/data/msrvtt/train.csv", eval_csv="/data/msrvtt/test.csv", root="/data/msrvtt/videos",
            short_side=288, caption_column="caption", num_workers=-1)
        config.data.synthetic_task = "captions"
        config.caption.max_length = 64  # the published text tower's positions
    else:
        config.data = config_lib.csv_data(
            train_csv="/data/kinetics400/train.csv", eval_csv="/data/kinetics400/val.csv",
            root="/data/kinetics400/videos", num_classes=400, num_frames=16, image_size=288, sampling_rate=4)

    opt = config.optimizer
    opt.b1, opt.b2, opt.weight_decay = 0.9, 0.999, 0.05
    opt.min_lr = 1e-6
    if arg.recipe == "pooler":
        config.batch_size, config.num_epochs = 256, 20
        opt.base_lr, opt.lr_batch_base, opt.warmup_epochs = 1e-3, 256, 2
    elif arg.recipe == "finetune":
        config.batch_size, config.num_epochs = 512, 50
        opt.base_lr, opt.lr_batch_base, opt.warmup_epochs = 1e-3, 512, 5
        opt.layer_decay, opt.label_smoothing = 0.75, 0.1
        config.model.drop_path = 0.1
        config.loss.mixup_alpha, config.loss.cutmix_alpha = 0.8, 1.0
        config.data.update(train_crop="random_resized", rand_augment="rand-m7-n4-mstd0.5-inc1", erase_prob=0.25)
    else:
        config.batch_size, config.num_epochs = 512, 10
        opt.base_lr, opt.lr_batch_base, opt.warmup_epochs, opt.weight_decay = 1e-5, 512, 1, 0.01
    config.log_every = 50
    config.eval_every = 0
    config.checkpoint_every = 2000
    config.needs_init_from = (
        f"configs/videoprism.py:recipe={arg.recipe} starts from a converted VideoPrism checkpoint: python -m "
        f"vidjax.convert --from_hf SRC --out /ckpt/videoprism, then add --config.init_from=/ckpt/videoprism (or set "
        f"--config.needs_init_from= to train from scratch anyway).")

    if arg.runlocal:
        runlocal(config, arg, variant)
    return config


def runlocal(config, arg, variant: str) -> None:
    """The micro recipes on the embedded dataset (the module docstring); measured figures with each."""
    contrastive = arg.recipe == "contrastive"
    config_lib.runlocal(config, variant, peak_lr=1e-3 if contrastive else 2e-3, num_epochs=4, image_size=24)
    config.model.update(pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225))  # ImageNet's
    if contrastive:
        config.data.synthetic_task = "captions"
        config.caption.max_length = 24  # the longest embedded caption is 17 words
        config.model.update(max_text_length=24, temperature_init=0.1)
    if not arg.variant:
        config.model.update(spatial_depth=2, temporal_depth=1, num_auxiliary_layers=1, text_depth=1)
    config.data.flip = False  # the embedded classes are motion directions: a flip turns them into others
    config.optimizer.update(weight_decay=0.01, warmup_epochs=0.25)
    config.loss.mixup_alpha = config.loss.cutmix_alpha = 0.0
    config.optimizer.update(layer_decay=1.0, label_smoothing=0.0)
    config.data.update(rand_augment="", erase_prob=0.0, train_crop="random")
    config.needs_init_from = ""
    if not contrastive:
        # The micro encoder, frozen after the contrastive run or trained from scratch, reads what a frame shows, not
        # the motion direction the embedded classes are (the docstring): the classifiers train on the scene-cue clips,
        # as SVT's runlocal does, whose stripes run along the class's motion axis (a frame tells the axis, only the
        # motion which way along it).
        config.data.synthetic_scene_cue = True
    if arg.recipe == "pooler":
        config.needs_init_from = (
            "configs/videoprism.py:runlocal trains an attention-pooling classifier on a frozen encoder: make one "
            "first with python -m vidjax.main --config=configs/videoprism.py:recipe=contrastive,runlocal "
            "--workdir=/tmp/videoprism_clip_local, then add --config.init_from=/tmp/videoprism_clip_local (or set "
            "--config.needs_init_from= to train on the frozen random encoder anyway).")
