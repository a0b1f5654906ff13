r"""Share a checkpoint or a training run on the Hugging Face Hub, with a generated model card.

  python -m vidjax.push /work/finetune my-user/videomae-s-ucf101
  python -m vidjax.push /ckpt/videomae_b_k400 my-org/videomae-b-k400 --private --dataset=kinetics400
  python -m vidjax.push /work/finetune my-user/videomae-s-ucf101 --dry_run --out=/tmp/push

DIR is a training workdir (its latest checkpoint: the EMA weights when the run kept them), one of its step folders
or a `python -m vidjax.convert` output. It is written as the self-describing folder `vidjax.pretrained.load` reads
(vidjax.json: model config, task, class or target names, clip settings; params/: an orbax checkpoint; tokenizer/ for
a captioner) plus README.md, a model card: the architecture, the model config (and a run's whole config), the run's
eval metrics at the pushed step from its metrics.jsonl, the lines that load it (vidjax; transformers through `python
-m vidjax.export --to_hf` when the model has a transformers class) and the dataset when the config names one. The
folder goes to REPO_ID (created when missing) in one commit of huggingface_hub's upload API, so its token (HF_TOKEN
or `hf auth login`, with write access) and HF_ENDPOINT apply; uploading needs the `hub` extra (pip install
'vidjax[hub]'), --dry_run does not. Afterwards every command takes REPO_ID as its checkpoint (`python -m
vidjax.predict --checkpoint=REPO_ID clip.mp4`).

--dry_run writes the folder and uploads nothing: to --out (a new folder), else to a new temporary folder, and
prints where. Without --dry_run, --out keeps a copy of what was uploaded.

An existing repository is pushed to as it is (a new commit on top of its history); --private makes it private: a new
one is created private, an existing public one is switched to private before anything is uploaded (or, when the token
may not change its settings, nothing is uploaded and the one line says so); an existing private one stays private
either way. --revision=BRANCH commits to that branch, created from main when missing, and the line that reports the
upload names REPO_ID@BRANCH to load it by; a tag or a name git does not allow for a branch is refused before anything
is created. REPO_ID, --revision and --dataset are checked before any work.

Exit status: 0 done, 2 bad arguments (REPO_ID, --revision, --dataset), a checkpoint that does not load, or the Hub
refusing or unreachable (one `error:` line each); 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM, with one line
saying what was uploaded: nothing before the commit was sent; once it was, all of it or none of it (a Hub commit is
atomic), and running the same command again pushes the checkpoint again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from typing import NoReturn

import ml_collections

import vidjax
from vidjax import cli, fileio, pretrained, tasks
from vidjax.config_lib import ConfigError
from vidjax.convert import hf
from vidjax.convert.common import ConversionError, Converted, write_converted
from vidjax.metric_writer import read_metrics
from vidjax.pretrained import hub

CARD = "README.md"
# Model keys the card's architecture row names where the model has them (a variant names its patch, and sizes left
# at 0 are the variant's).
_SIZES = (("width", "width"), ("depth", "depth"), ("num_heads", "heads"), ("tubelet_size", "tubelet"))


def transformers_class(converted: Converted) -> str | None:
    """The transformers class `python -m vidjax.export --to_hf` writes this checkpoint as, or None when it has none
    (VideoMamba, SVT, ViViT's factorised models, ...)."""
    try:
        return hf.to_hf(converted).architecture
    except ConversionError:
        return None


def _workdir(checkpoint: pathlib.Path) -> pathlib.Path | None:
    """The training run a checkpoint folder belongs to (WORKDIR, or WORKDIR/checkpoints/<step>), if any."""
    if (checkpoint / "checkpoints").is_dir():
        return checkpoint
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return None


def final_eval(workdir: pathlib.Path | None, step: int | None = None) -> dict | None:
    """The last eval row of a run's metrics.jsonl at or before `step` (None: any) as {"step": N, metric: value,
    ...}, or None."""
    if workdir is None or not (workdir / "metrics.jsonl").is_file():
        return None
    rows = [r for r in read_metrics(str(workdir)) if r.get("split") == "eval" and (step is None or r["step"] <= step)]
    return {k: v for k, v in rows[-1].items() if k != "split"} if rows else None


def dataset_of(training: ml_collections.ConfigDict | None) -> str | None:
    """What a run's config says it trained on, in words (file lists and folders by their last two path parts)."""
    if training is None or "data" not in training:
        return None
    data = training.data

    def short(path: str) -> str:
        return "/".join(pathlib.PurePath(path).parts[-2:])

    return {
        "synthetic": f"vidjax's embedded synthetic dataset (`vidjax.data.synthetic`, clips carrying "
                     f"`{data.get('synthetic_task')}`, {data.get('num_train')} training clips)",
        "tfds": f"the TFDS dataset `{data.get('tfds_name')}` (split `{data.get('train_split')}`)",
        "csv": f"the video list `{short(data.get('train_csv', ''))}`",
        "charades": f"Charades-style lists (`{short(data.get('train_csv', ''))}`)",
        "folder": f"the class folders of `{short(data.get('train_folder', ''))}`",
        "array_record": f"the packed dataset `{short(data.get('train_pack', ''))}`",
    }.get(data.get("source"))


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _details(summary: str, config: ml_collections.ConfigDict) -> str:
    """A config as a folded JSON block of the card."""
    text = json.dumps(config.to_dict(), indent=1, sort_keys=True, default=str)
    return f"<details><summary>{summary}</summary>\n\n```json\n{text}\n```\n\n</details>"


def model_card(converted: Converted, repo_id: str, *, training: ml_collections.ConfigDict | None = None,
               metrics: dict | None = None, dataset: str | None = None, hub_dataset: str | None = None) -> str:
    """README.md of a pushed checkpoint: Hub metadata, how to load it, the architecture, the run's eval metrics,
    the data and the configs."""
    cfg, pre, task = converted.model_config, converted.preprocessing, converted.task
    params = sum(v.size for v in converted.params.values())
    variant = f", variant {cfg.variant}" if cfg.get("variant") else ""
    known = task in tasks.available()
    # What the card says of the task (`Presentation.purpose`, `hub_pipeline_tag`).
    shown = tasks.presentation_of(task) if known else None
    what = (shown.purpose if shown is not None else "") or "video embeddings (a backbone)"
    meta = ["---", "library_name: vidjax", "tags:", "- vidjax", "- jax", "- flax", "- video"]
    if shown is not None and shown.hub_pipeline_tag:
        meta.append(f"pipeline_tag: {shown.hub_pipeline_tag}")
    if hub_dataset:
        meta += ["datasets:", f"- {hub_dataset}"]
    lines = [*meta, "---", "", f"# {repo_id.split('/')[-1]}", "",
             f"A vidjax `{converted.model_name}` model for {what} ({params / 1e6:.2f}M parameters), made with "
             f"[vidjax](https://github.com/vidjax/vidjax) {vidjax.__version__}.", "", "## Use", "",
             "```python", "import vidjax.pretrained", "", f'model = vidjax.pretrained.load("{repo_id}")']
    if "num_frames" in pre:
        lines += ['views = model.read_views("clip.mp4")   # decoded and cropped as the model expects',
                  "out = model(model.preprocess(views))"]
    lines += ["```", ""]
    if known and tasks.readout_of(task).predicts:  # `python -m vidjax.predict` reads it
        lines += ["```bash", f"python -m vidjax.predict --checkpoint={repo_id} clip.mp4", "```", ""]
    hf_class = transformers_class(converted)
    if hf_class:
        lines += [f"In PyTorch, as a transformers `{hf_class}`: `python -m vidjax.export --to_hf {repo_id} --out "
                  f"hf_model`, then `transformers.{hf.AUTO_CLASSES.get(hf_class, hf_class)}.from_pretrained("
                  f"\"hf_model\")`.", ""]
    size = ", ".join(f"{label} {cfg[key]}" for key, label in _SIZES if cfg.get(key))
    lines += ["## Model", "", "| | |", "| --- | --- |",
              f"| architecture | `{converted.model_name}`{variant}{f' ({size})' if size else ''} |",
              f"| task | {task or 'none (a backbone)'} |"]
    names = converted.class_names or converted.target_names
    if names:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        lines.append(f"| outputs | {len(names)}: {shown} |")
    if "num_frames" in pre:
        rate = f", frame stride {pre['sampling_rate']}" if pre.get("sampling_rate") else ""
        lines.append(f"| input | {pre['num_frames']} frames x {pre['image_size']} px{rate}; (pixels/255 - mean) / std, "
                     f"mean {pre['mean']}, std {pre['std']} |")
    lines += [f"| parameters | {params:,} |", ""]
    if metrics:
        lines += ["## Evaluation", "", f"The run's evaluation at step {metrics.get('step')} (its metrics.jsonl):",
                  "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_number(v)} |" for k, v in metrics.items() if k != "step"]
        lines.append("")
    if dataset or hub_dataset or training is not None:
        lines += ["## Training", ""]
        if dataset or hub_dataset:
            lines += [f"Data: {dataset or hub_dataset}.", ""]
        if training is not None:
            lines += [f"{training.get('total_steps')} steps of batch {training.get('batch_size')}"
                      + (f", started from `{training.init_from}`" if training.get("init_from") else "") + ".", ""]
    lines += ["## Config", "", _details("The model block (`config.model`)", cfg)]
    if training is not None:
        lines += ["", _details("The training run's whole config", training)]
    return "\n".join(lines) + "\n"


def prepare(checkpoint: str, repo_id: str, out: str | os.PathLike, *, hub_dataset: str | None = None
            ) -> pathlib.Path:
    """Writes what `push` uploads for `checkpoint` to `out` (a new folder), atomically: the checkpoint as
    `pretrained.as_converted` gives it, with the model card as README.md."""
    stored = pretrained.read_config(checkpoint)
    converted = pretrained.as_converted(checkpoint)
    directory = pathlib.Path(fileio.user_path(checkpoint))
    workdir = _workdir(directory)
    # The metrics of the weights pushed: a run's evaluation at (or last before) the checkpoint's step.
    step_dir = pretrained.latest_step_dir(directory) if workdir == directory else directory
    metrics = final_eval(workdir, int(step_dir.name) if workdir and step_dir.name.isdigit() else None)
    card = model_card(converted, repo_id, training=stored.training, metrics=metrics,
                      dataset=dataset_of(stored.training), hub_dataset=hub_dataset)
    with tempfile.TemporaryDirectory(prefix="vidjax-push-card-") as tmp:
        card_path = pathlib.Path(tmp, CARD)
        card_path.write_text(card)
        converted.files[CARD] = str(card_path)
        return write_converted(converted, out)


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.push", __doc__)
    parser.add_argument("dir", metavar="DIR", help="training workdir, WORKDIR/checkpoints/<step>, or a converted "
                                                   "checkpoint")
    parser.add_argument("repo_id", metavar="REPO_ID", help="the Hub model repository, owner/name")
    parser.add_argument("--dry_run", action="store_true", help="write the folder it would upload, upload nothing")
    parser.add_argument("--out", default="", metavar="FOLDER",
                        help="write the folder here (a new folder; default: a temporary one, removed after an upload)")
    parser.add_argument("--private", action="store_true",
                        help="make the repository private: created private when new, switched to private before the "
                             "upload when it exists and is public")
    parser.add_argument("--revision", default="", metavar="BRANCH",
                        help="branch to commit to, created from main when missing (default main)")
    parser.add_argument("--commit_message", default="Upload with python -m vidjax.push", metavar="TEXT",
                        help="the commit's message")
    parser.add_argument("--dataset", default="", metavar="HUB_DATASET",
                        help="a Hub dataset id the model was trained on, for the card's metadata (e.g. kinetics400)")
    return parser


def interrupted_line(progress: hub.Upload | None) -> str:
    """What an interrupted push kept, in words (`cli.stopped`): nothing before the commit was sent; after, all of it
    or none of it, a Hub commit being atomic."""
    again = "run the same command again to push it"
    if progress is None:  # still writing the folder: the Hub was not asked
        return f"nothing was uploaded; {again}."
    repo, rev = progress.repo_id, progress.branch
    done = [text for flag, text in ((progress.created, f"the repository {repo} was created"),
                                    (progress.made_private, f"{repo} was made private"),
                                    (progress.branch_created, f"the branch {rev} was created")) if flag]
    before = f" ({', '.join(done)})" if done else ""
    if progress.commit_url:
        return f"the upload to {repo}@{rev} was done ({progress.commit_url}); nothing more was to do."
    if not progress.committing:
        return f"nothing was uploaded to {repo}{before}; {again}."
    return (f"the upload to {repo}@{rev} was under way{before}: a Hub commit is all or nothing, so the branch holds "
            f"either all of this checkpoint or none of it (see {hub.web_url(repo, rev)}); {again} (again).")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        hub.repository(args.repo_id)  # before any work: a bad id, branch or dataset is a typo
        if args.revision:
            hub.branch(args.revision)
        if args.dataset:
            hub.dataset_id(args.dataset)
        if not os.path.exists(fileio.user_path(args.dir)):
            raise FileNotFoundError(f"{args.dir} does not exist; give a training workdir, one of its step folders or "
                                    f"a converted checkpoint.")
    except (hub.HubError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scratch = None if args.out else tempfile.mkdtemp(prefix="vidjax-push-")
    out = pathlib.Path(args.out or pathlib.Path(scratch, args.repo_id.split("/")[-1]))
    progress = None
    try:
        folder = prepare(args.dir, args.repo_id, out, hub_dataset=args.dataset or None)
        if args.dry_run:
            print(f"Wrote {folder}: what `python -m vidjax.push` would upload to {args.repo_id} (nothing uploaded).")
            return 0
        progress = hub.Upload(args.repo_id)
        url = hub.upload(folder, args.repo_id, private=args.private, revision=args.revision or None,
                         message=args.commit_message, progress=progress)
    except (ConversionError, ConfigError, FileNotFoundError) as e:  # hub.HubError is a ConversionError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # cli.Interrupted: SIGINT or SIGTERM
        return cli.stopped(e, interrupted_line(progress))
    finally:
        if scratch and not args.dry_run:
            shutil.rmtree(scratch, ignore_errors=True)
    where = args.repo_id if progress.branch == hub.DEFAULT_REVISION else f"{args.repo_id}@{progress.branch}"
    made = (" (created private)" if args.private else " (created)") if progress.created else (
        " (now private)" if progress.made_private else "")
    print(f"Uploaded {args.dir} to {args.repo_id}{made}, branch {progress.branch}: {url}. Load it with "
          f"`vidjax.pretrained.load(\"{where}\")` or --checkpoint={where}.")
    return 0


def run_command() -> NoReturn:
    """`python -m vidjax.push`: what its entry module calls."""
    cli.guard(main)
