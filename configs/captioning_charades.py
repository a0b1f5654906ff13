r"""Video captioning on Charades: a frozen VideoMAE ViT-B/16 encoder cross-attended by GPT-2 small.

The published-style recipe (a Charades captioning study: frozen video encoder, GPT-2 decoder): the caption of a
video is its Charades `script` (`--config.data.caption_column=descriptions` takes the annotators' descriptions, ';'
separated, as several references); the clip is the whole video, 16 frames spread over it (sampling_rate 0) at
224 px; the encoder starts from config.init_from and stays frozen, its 1568 tokens all cross-attended
(visual_tokens "all"; "cls" or "pooled" with a CLS-token or learned-pool encoder, num_chunks K for K consecutive
clips); the decoder starts from GPT-2 small (config.decoder_init) with its byte-level BPE tokenizer; AdamW lr 2e-4,
betas (0.9, 0.999), eps 1e-6, batch 4, captions cut to 128 tokens, beam search with 3 beams at evaluation.

Convert the starting checkpoints once (needs the torch extra: pip install 'vidjax[torch]'):
  python -m vidjax.convert --from_hf MCG-NJU/videomae-base-finetuned-kinetics --out /ckpt/videomae_b_k400
  python -m vidjax.convert --from_hf gpt2 --out /ckpt/gpt2          # weights and tokenizer (DST/tokenizer)
Then, with Charades_v1_train.csv / Charades_v1_test.csv and the videos in /data/charades/videos/<id>.mp4:
  python -m vidjax.main --config=configs/captioning_charades.py --workdir=/ckpt/caption_charades \
    --config.init_from=/ckpt/videomae_b_k400 --config.decoder_init=/ckpt/gpt2 \
    --config.data.tokenizer=/ckpt/gpt2/tokenizer \
    --config.data.train_csv=/data/charades/Charades_v1_train.csv \
    --config.data.eval_csv=/data/charades/Charades_v1_test.csv --config.data.root=/data/charades/videos
Any vidjax video encoder: --config.model.encoder_name=timesformer (and its checkpoint); the encoder block is that
model's config (--config.model.encoder.KEY). Train the encoder too with --config.model.freeze_encoder=False.
Evaluation writes eval_bleu1..4, eval_rougeL, eval_cider and eval_bleu4_constant (always answering the most
frequent training caption); the run ends printing sample captions and writing all of them to
WORKDIR/eval_captions.txt. Caption a video file: python -m vidjax.predict --checkpoint=WORKDIR video.mp4

Local run on the embedded dataset's captioning variant ("a small red disc moves up and to the left quickly over
horizontal stripes", four paraphrases per clip), a micro captioner in a couple of minutes on a laptop CPU. Its
encoder is the runlocal VideoMAE fine-tune, frozen, as the full recipe's (from the pre-training alone a micro
decoder only learns the captions' prior); so the three runlocal commands, in order:
  python -m vidjax.main --config=configs/videomae_k400.py:runlocal --workdir=/tmp/vidjax_runlocal
  python -m vidjax.main --config=configs/videomae_finetune_k400.py:runlocal --workdir=/tmp/vidjax_ft_local \
    --config.init_from=/tmp/vidjax_runlocal
  python -m vidjax.main --config=configs/captioning_charades.py:runlocal --workdir=/tmp/vidjax_caption_local \
    --config.init_from=/tmp/vidjax_ft_local
"""

from vidjax import config_lib
from vidjax.models import captioner, layers


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, variant="", runlocal=False)
    variant = config_lib.recipe_variant(arg, "B/16", "Mu/8")
    layers.parse_variant(variant)  # a typo'd variant fails here, naming itself
    config = config_lib.trainer_config()
    config.model_name = "captioner"
    config.task = "captioning"

    config.model = captioner.default_config("videomae")
    config.model.encoder.update(variant=variant, num_frames=16, image_size=224)
    config.model.update(visual_tokens="all", freeze_encoder=True)
    config.model.decoder.vocab_size = 0  # the tokenizer's (GPT-2 small's 50257 when config.decoder_init is set)

    config.data = config_lib.data_config(
        source="charades", num_train=0, num_eval=0, num_frames=16, image_size=224, sampling_rate=0,
        train_csv="/data/charades/Charades_v1_train.csv", eval_csv="/data/charades/Charades_v1_test.csv",
        root="/data/charades/videos", short_side=224, train_crop="random_resized", caption_column="script",
        num_workers=8)

    config.batch_size = 4
    config.num_epochs = 10
    opt = config.optimizer
    opt.base_lr, opt.lr_batch_base = 2e-4, 4
    opt.b1, opt.b2, opt.eps, opt.weight_decay = 0.9, 0.999, 1e-6, 0.01
    opt.warmup_epochs, opt.min_lr = 0.5, 1e-6
    config.caption.update(max_length=128, num_beams=3, samples=8)
    config.log_every = 100
    config.eval_every = 0
    config.checkpoint_every = 2000
    config.needs_init_from = (
        "configs/captioning_charades.py captions with a frozen encoder from config.init_from: convert one (python -m "
        "vidjax.convert --from_hf MCG-NJU/videomae-base-finetuned-kinetics --out /ckpt/videomae_b_k400) and add "
        "--config.init_from=/ckpt/videomae_b_k400 (or set --config.needs_init_from= to train from scratch anyway).")

    if arg.runlocal:
        # A micro captioner on the embedded captioning clips: the frozen micro VideoMAE of the runlocal fine-tune
        # (its 64 tokens cross-attended), a 2-block decoder 64 wide over a word-level tokenizer of the captions.
        config_lib.runlocal(config, variant, peak_lr=2e-3, num_epochs=8, video_model=config.model.encoder)
        config.data.synthetic_task = "captions"
        config.model.decoder.update(width=64, depth=2, num_heads=4, n_positions=32, embd_dropout=0.0,
                                    attn_dropout=0.0, resid_dropout=0.0)
        config.optimizer.update(b2=0.98, eps=1e-8, weight_decay=0.01, warmup_epochs=0.5)
        config.caption.update(max_length=24, num_beams=3, samples=8)
        config.eval_every = 0  # beam search over the eval split once, at the end (the run is 512 steps)
        config.needs_init_from = (
            "configs/captioning_charades.py:runlocal captions with the frozen encoder of the runlocal VideoMAE "
            "fine-tune. Make it first: python -m vidjax.main --config=configs/videomae_k400.py:runlocal "
            "--workdir=/tmp/vidjax_runlocal; python -m vidjax.main --config=configs/videomae_finetune_k400.py:runlocal "
            "--workdir=/tmp/vidjax_ft_local --config.init_from=/tmp/vidjax_runlocal; then add "
            "--config.init_from=/tmp/vidjax_ft_local (or set --config.needs_init_from= to train from scratch anyway).")
    return config
