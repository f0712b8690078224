"""Shared pytest set-up: offline datasets, deliberate thread counts, quiet TensorFlow."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SHARED_TFDS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tensorflow_datasets"
if _SHARED_TFDS.is_dir():
    os.environ.setdefault("TFDS_DATA_DIR", str(_SHARED_TFDS))

import tensorflow as tf  # noqa: E402

tf.config.threading.set_inter_op_parallelism_threads(2)
tf.config.threading.set_intra_op_parallelism_threads(2)
