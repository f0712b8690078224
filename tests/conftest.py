"""Shared pytest set-up: offline datasets, deliberate thread counts, quiet TensorFlow."""

import hashlib
import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SHARED_TFDS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tensorflow_datasets"
if _SHARED_TFDS.is_dir():
    os.environ.setdefault("TFDS_DATA_DIR", str(_SHARED_TFDS))

import tensorflow as tf  # noqa: E402

tf.config.threading.set_inter_op_parallelism_threads(2)
tf.config.threading.set_intra_op_parallelism_threads(2)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from apprentice_tf.compat import keras  # noqa: E402
from apprentice_tf.models import cifar_resnet  # noqa: E402

layers = keras.layers


def tiny_cnn(residual: bool = True, num_classes: int = 4, width: int = 8) -> keras.Model:
    """A 16x16 CNN with every block shape quantize_model must handle (BN momentum 0.9, so the
    moving statistics settle within the few dozen steps a test trains).

    first conv (float) -> BN -> ReLU; conv -> BN -> ReLU; residual conv -> BN -> Add -> ReLU;
    depthwise -> BN -> ReLU; pointwise conv -> ReLU (standalone); GAP; Dense -> ReLU; Dense (float).
    """
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(width, 3, padding="same", name="stem")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv1")(x)
    y = layers.BatchNormalization(momentum=0.9, name="bn1")(y)
    y = layers.ReLU(name="relu1")(y)
    if residual:
        y = layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv2")(y)
        y = layers.BatchNormalization(momentum=0.9, name="bn2")(y)
        y = layers.ReLU(name="relu2")(layers.Add(name="add")([x, y]))
    y = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="dw")(y)
    y = layers.BatchNormalization(momentum=0.9, name="dw_bn")(y)
    y = layers.ReLU(name="dw_relu")(y)
    y = layers.Conv2D(2 * width, 1, name="pw")(y)
    y = layers.ReLU(name="pw_relu")(y)
    y = layers.GlobalAveragePooling2D(name="pool")(y)
    y = layers.Dense(16, name="fc")(y)
    y = layers.ReLU(name="fc_relu")(y)
    outputs = layers.Dense(num_classes, name="logits")(y)
    return keras.Model(inputs, outputs, name="tiny_cnn")


def blobs(n: int = 256, num_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """16x16x3 images whose class is a bright quadrant: easy to learn in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    x = rng.normal(0.0, 0.3, (n, 16, 16, 3)).astype("float32")
    for i, label in enumerate(y):
        r, c = divmod(int(label) % 4, 2)
        x[i, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8, :] += 1.0
    return x, y.astype("int64")


def make_zoo_entry(
    root: pathlib.Path, model: str = "resnet8", width: float = 0.25, accuracy: float = 0.5
) -> pathlib.Path:
    """A zoo entry laid out as recipes.pretrain writes it, for a tiny untrained CIFAR ResNet."""
    directory = root / f"cifar10_{model}"
    directory.mkdir(parents=True)
    network = cifar_resnet(
        int(model.removeprefix("resnet")), num_classes=10, width_multiplier=width
    )
    weights = directory / "float.weights.h5"
    network.save_weights(weights)
    (directory / "float.csv").write_text("epoch,accuracy\n0,0.1\n")
    results = {
        "command": f"python -m recipes.pretrain --model={model} --width={width}",
        "config": {"dataset": "cifar10", "model": model, "width": width, "epochs": 1},
        "num_classes": 10,
        "rows": [{"keras_top1": accuracy, "tflite_top1": accuracy}],
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    (directory / "results.json").write_text(json.dumps(results))
    return directory


@pytest.fixture
def cnn_factory():
    return tiny_cnn


@pytest.fixture(scope="session")
def blob_data():
    return blobs()


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
