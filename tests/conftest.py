"""Test set-up: 8 simulated CPU devices, set before jax initialises its backend."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A tiny TFDS dataset prepared offline: uint8 frames, encoded-video bytes and a ClassLabel."""
    import tensorflow_datasets as tfds

    class TinyClips(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "frames": tfds.features.Tensor(shape=(None, 6, 8, 3), dtype=np.uint8),
                "encoded": tfds.features.Tensor(shape=(), dtype=np.object_),
                "label": tfds.features.ClassLabel(names=["jump", "run", "walk"]),
                "score": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(5), "test": self._generate_examples(2)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"frames": np.full((2 + i, 6, 8, 3), i, np.uint8), "encoded": b"video-%d" % i,
                          "label": i % 3, "score": np.float32([i, -i])}

    data_dir = tmp_path_factory.mktemp("tfds")
    TinyClips(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir
