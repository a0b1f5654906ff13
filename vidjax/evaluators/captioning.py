"""Captioning: the captioner decodes each eval video's caption on the device (beam search with num_beams, greedy
at 1) and the captions are scored on the host against every reference with the COCO caption evaluation
(`vidjax.metrics.caption_scores`). Metrics loss (each caption's teacher-forced loss per token, averaged), bleu1..4,
rougeL, cider, bleu4_constant (the BLEU-4 of always answering the most frequent training caption, when the run
recorded it: what a captioner that ignores the video scores) and captions_truncated (eval captions cut by
config.caption.max_length). The end of training prints `samples` captions beside their references and writes them
all to WORKDIR/eval_captions.txt. The losses and the captions' words come from the task it was handed: its training
spec's `caption_losses` and its readout's `decode_captions` (the run's tokenizer).

Options: num_beams, length_penalty, samples (defaults: config.caption's).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vidjax import fileio, metrics
from vidjax.evaluators import base

CAPTIONS_STEM = "eval_captions"  # WORKDIR/eval_captions.txt, eval_captions_NAME.txt for another evaluation NAME


class Evaluator(base.Evaluator):
    requires = {"target_key": "captions"}
    options = {"num_beams": None, "length_penalty": None, "samples": None}

    def batch_outputs(self, model, batch: dict) -> dict[str, jax.Array]:
        """{"tokens": (B, max_length) the generated caption ids, start token first; "loss": (B,) each caption's
        teacher-forced loss per token; "index", "truncated"}, and the batch's "valid" / "decode_failures" rows."""
        loss = self.spec.caption_losses(model, batch)
        cap = self.config.caption
        tokens = model.generate(batch["video"], max_new_tokens=int(cap.max_length) - 1,
                                num_beams=int(self.setting("num_beams", cap.num_beams)),
                                length_penalty=float(self.setting("length_penalty", cap.length_penalty)))
        passed = {k: batch[k] for k in ("valid", "decode_failures") if k in batch}
        return {"tokens": tokens, "loss": loss, "index": batch["index"], "truncated": batch["caption_truncated"],
                **passed}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        predictions, references = self.captions(outputs)
        result = {"loss": float(np.mean(outputs["loss"])), **metrics.caption_scores(predictions, references)}
        constant = self.context.metadata.get("constant_caption")
        if constant:
            result["bleu4_constant"] = metrics.caption_scores([constant] * len(references), references)["bleu4"]
        result["captions_truncated"] = float(np.sum(outputs["truncated"]))
        return result

    def captions(self, outputs: dict[str, np.ndarray]) -> tuple[list[str], list[tuple[str, ...]]]:
        """(generated captions, reference captions) of gathered outputs."""
        predictions = self.readout.decode_captions(self.config, outputs["tokens"])
        references = [tuple(self.source[int(i)]["captions"]) for i in outputs["index"]]
        return predictions, references

    def figures(self, params, step: int) -> list[str]:
        """Not a figure: the last run's captions beside their references, `samples` of them printed and all of them
        written to WORKDIR/eval_captions.txt."""
        if jax.process_index() != 0 or not self.outputs:
            return []
        outputs = self.outputs
        predictions, references = self.captions(outputs)
        lines = []
        for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
            lines += [f"video {int(outputs['index'][i])}", f"  generated: {prediction}",
                      *(f"  reference: {r}" for r in refs)]
        shown = self.setting("samples", self.config.caption.samples)
        if shown:
            print(f"Eval captions at step {step} ({min(shown, len(predictions))} of {len(predictions)}):\n"
                  + "\n".join(lines[: sum(2 + len(r) for r in references[:shown])]), flush=True)
        path = os.path.join(self.context.workdir, self.file_name(CAPTIONS_STEM, "txt"))
        with fileio.atomic_output(path) as f:
            f.write("\n".join(lines) + "\n")
        return [path]
