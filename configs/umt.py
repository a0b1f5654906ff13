r"""Unmasked-teacher distillation (UMT, Li et al. 2023): UMT-B/16 stage 1, the published recipe; `:student=videomamba`
VideoMamba-M/16's masked pre-training (Li et al. 2024: the same teacher and masks, drop path 0.4, the last layer
aligned, 801 epochs).

OpenGVLab/unmasked_teacher single_modality/exp/pretraining/b16_ptk710_f8_res224.sh: a VideoMAE-style ViT-B/16 student
(tubelet 1, 8 frames at 224 px, q and v biases, LayerNorm eps 1e-6, fixed sin-cos positions, drop path 0.1) sees
20% of each frame's tokens, picked by attention masking (drawn in proportion to the teacher's class-token attention);
its last 6 blocks' tokens, through per-layer heads (Linear 768 -> 512, LayerNorm, unit length), match those of OpenAI
CLIP ViT-B/16's last 6 blocks (through its ln_post and 512-wide projection, unit length) at the same places, loss
2 - 2 cos. AdamW (0.9, 0.95), weight decay 0.05, lr 1.5e-4 x batch/256 with 40 warm-up epochs and cosine decay to
1e-5 x batch/256, 201 epochs at batch 2048 (64 on 32 GPUs) of Kinetics-710 (here Kinetics-400's lists by default;
give K710's with --config.data.*).

The teacher, converted once (`python -m vidjax.convert --from_hf openai/clip-vit-base-patch16 --out /ckpt/clip_b16`,
its vision tower and projection; `vidjax.models.image_encoder`):
  python -m vidjax.main --config=configs/umt.py --workdir=/tmp/umt_b16 --config.distill.teacher=/ckpt/clip_b16 \
    --config.data.train_csv=/data/k400/train.csv --config.data.eval_csv=/data/k400/val.csv \
    --config.data.root=/data/k400/videos
Fine-tune the student as a VideoMAE-B/16 classifier: configs/videomae_finetune_k400.py with
--config.init_from=/tmp/umt_b16 (the student's parameters are read; the teacher and the heads are not).

Local run on the embedded dataset (no download): the teacher is the embedded dataset's own fine-tuned classifier,
made by the VideoMAE runlocals (pre-training, then its fine-tune), and the student a micro VideoMamba.
  python -m vidjax.main --config=configs/videomae_k400.py:runlocal --workdir=/tmp/pt_local
  python -m vidjax.main --config=configs/videomae_finetune_k400.py:runlocal --workdir=/tmp/teacher_local \
    --config.init_from=/tmp/pt_local
  python -m vidjax.main --config=configs/umt.py:runlocal --workdir=/tmp/umt_local \
    --config.distill.teacher=/tmp/teacher_local
The runlocal student is a micro VideoMamba at the teacher's clip (8 x 32 px, tubelet 2; 2 blocks, temporal-first
scans over the kept tokens) that sees 20% of each slice's tokens, picked by the attention they receive in the
teacher's last block (the teacher has no class token), and aligns that block. Two probes read its tokens against
its random initial weights: the task's attentive probe (eval_attentive_top1) and a linear one on their mean
(probe_linear_top1), each trained on the 2,048 training clips and scored on the 256 eval clips. Measured here
(2 cores, beside other work, 2026-11-29): the teacher classifies the eval split at 0.891 top-1; the alignment loss
goes 2.005 -> 0.621 over the 512 steps (4 minutes), the linear probe 0.121 (random init) -> 0.762, the attentive
probe 0.859 (the random scans already carry the motion) -> 0.926. Then fine-tune the student:
  python -m vidjax.main --config=configs/videomamba_k400.py:runlocal --workdir=/tmp/ft_umt \
    --config.init_from=/tmp/umt_local
(the student's 40 tensors are read; the head starts fresh). `:runlocal,student=videomae` distils into a micro
VideoMAE instead (the published recipe's family): loss 2.013 -> 0.282, linear probe 0.105 -> 0.926, attentive
0.688 -> 0.934; it fine-tunes with configs/videomae_finetune_k400.py:runlocal (54 tensors read).
"""

from vidjax import config_lib
from vidjax.models import distill, layers, videomamba
from vidjax.tasks import distill as distill_task

STUDENTS = ("videomae", "videomamba")


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, variant="", student="", runlocal=False)
    # The published recipe's student is UMT-B/16's ViT; the runlocal's a micro VideoMamba (`student=` picks either).
    arg.student = arg.student or ("videomamba" if arg.runlocal else "videomae")
    if arg.student not in STUDENTS:
        raise config_lib.ConfigError(f"configs/umt.py:student={arg.student!r}: choose one of {', '.join(STUDENTS)}.")
    mamba = arg.student == "videomamba"
    variant = config_lib.recipe_variant(arg, "M/16" if mamba else "B/16", "Mu/8")
    layers.parse_variant(variant, videomamba.VIDEOMAMBA_SIZES if mamba else layers.VIT_SIZES)  # a typo fails here
    config = config_lib.trainer_config()
    config.model_name = "distill"
    config.task = "distill"

    config.model = distill.default_config(arg.student, "image_encoder")
    student = config.model.student
    # VideoMamba-M's masked pre-training (OpenGVLab/VideoMamba videomamba/video_sm/exp/k400/videomamba_middle_mask/
    # run_mask_pretrain.sh): the same teacher and masks, drop path 0.4, the last layer aligned, 801 epochs.
    student.update(variant=variant, num_frames=8, image_size=224, tubelet_size=1, drop_path=0.4 if mamba else 0.1)
    teacher = config.model.teacher
    teacher.update(kind="clip", variant="B/16", num_frames=8, image_size=224, projection_dim=512)
    config.model.num_layers = 1 if mamba else 6
    config.distill = distill_task.default_config()

    config.data = config_lib.csv_data(
        train_csv="/data/kinetics400/train.csv", eval_csv="/data/kinetics400/val.csv",
        root="/data/kinetics400/videos", num_classes=400, num_frames=8, image_size=224, sampling_rate=4)
    config.data.update(short_side=320, train_crop="multi_scale")

    config.batch_size = 2048
    config.num_epochs = 801 if mamba else 201
    opt = config.optimizer
    opt.base_lr, opt.lr_batch_base = 1.5e-4, 256
    opt.b1, opt.b2 = 0.9, 0.95
    opt.weight_decay = 0.05
    opt.warmup_epochs = 40
    opt.min_lr = 1e-5
    config.log_every = 100
    config.eval_every = 5000
    config.eval_batches = 10
    config.checkpoint_every = 2000

    if arg.runlocal:
        # The micro student on the embedded dataset's 8 x 32 px clips; the teacher is a runlocal fine-tune's
        # VideoMAE (--config.distill.teacher=ITS_WORKDIR), whose clip the student's grid matches.
        config_lib.runlocal(config, variant, peak_lr=1.5e-3, video_model=config.model.student)
        config.model.student.tubelet_size = 2
        if mamba:  # as configs/videomamba_k400.py:runlocal: 2 blocks, sin-cos tables, temporal-first scans
            config.model.student.update(depth=2, position_init="sincos", token_order="temporal_first",
                                        x_proj_init_std=0.2, scan_chunk=16)
        config.model.teacher_name = "videomae"
        config.model.teacher = distill.default_config("videomae", "videomae").teacher
        config.model.teacher.update(variant="Mu/8", num_frames=8, image_size=32, head="none")
        config.model.num_layers = 1
        # The student's tokens probed twice against its random initial weights: the task's attentive probe, and a
        # linear one on their mean (the comparison a pre-training is read by).
        config.evals = dict(eval=dict(), probe=dict(type="linear"))
    return config
