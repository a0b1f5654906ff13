"""Video-text retrieval: a video-text model (a task whose head is "clip", e.g. the contrastive task's) embeds every
video of the split and its first caption; each caption then queries all the split's videos and each video all its
captions (`vidjax.metrics.retrieval_metrics`: the paired-set protocol of MSR-VTT, caption i's video is video i).

Metrics: loss (the symmetric InfoNCE of the whole split at the model's learned temperature), recall_at_1,
recall_at_5, recall_at_10 and median_rank of text-to-video retrieval, the same of video-to-text as v2t_recall_at_1
... v2t_median_rank, recall_at_1_chance (1 / videos: what a model that ignores its inputs finds), temperature, and
captions_truncated (eval captions cut by config.caption.max_length). Several eval views of a video (test_num_clips,
test_num_crops) are averaged into one embedding, L2-normalised again.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vidjax import metrics
from vidjax.evaluators import base
from vidjax.models import videoprism


def _log_softmax_diagonal(logits: np.ndarray) -> np.ndarray:
    """log softmax of each row of a square matrix, taken at its diagonal entry."""
    top = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return np.diag(logits) - log_norm


class Evaluator(base.Evaluator):
    requires = {"head": "clip"}

    def batch_outputs(self, model, batch: dict) -> dict[str, jax.Array]:
        """{"video_embeds" (B, D), "text_embeds" (B, D), "scale" (B,) the model's 1 / temperature, "truncated"}, and
        the batch's "valid" / "decode_failures" rows."""
        video, ids, mask = batch["video"], batch["caption_ids"], batch["caption_mask"]
        if video.ndim == 6:  # several eval views: their embeddings averaged
            b, v = video.shape[:2]
            embeds = model(video.reshape(b * v, *video.shape[2:]))["video_embeds"].reshape(b, v, -1).mean(1)
            embeds = videoprism.l2_normalize(embeds)
        else:
            embeds = model(video)["video_embeds"]
        texts = model.text_embeddings(ids, mask)["text_embeds"]
        scale = jnp.broadcast_to(model.contrastive_scale(), (video.shape[0],))
        passed = {k: batch[k] for k in ("valid", "decode_failures") if k in batch}
        return {"video_embeds": embeds.astype(jnp.float32), "text_embeds": texts.astype(jnp.float32),
                "scale": scale, "truncated": batch["caption_truncated"], **passed}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        videos = outputs["video_embeds"].astype(np.float64)
        texts = outputs["text_embeds"].astype(np.float64)
        similarity = texts @ videos.T  # (captions, videos): caption i's video is video i
        scale = float(outputs["scale"][0])
        loss = -(_log_softmax_diagonal(scale * similarity) + _log_softmax_diagonal(scale * similarity.T)).mean() / 2
        text_to_video = metrics.retrieval_metrics(similarity)
        video_to_text = metrics.retrieval_metrics(similarity.T)
        return {"loss": float(loss), **text_to_video, **{f"v2t_{k}": v for k, v in video_to_text.items()},
                "recall_at_1_chance": 1.0 / len(videos), "temperature": 1.0 / scale,
                "captions_truncated": float(np.sum(outputs["truncated"]))}
