"""Tests for apprentice_tf.data: real offline CIFAR-10 (TFDS_DATA_DIR, see conftest.py) in tiny
slices, and tfds' mock data for datasets that are not available offline."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from apprentice_tf import data
from apprentice_tf.compat import tf


def _materialise(ds):
    """All (images, labels) of a dataset as two NumPy arrays."""
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def test_cifar10_shapes_and_dtypes():
    ds = data.load("cifar10", "test[:40]", batch_size=16)
    batches = list(ds)
    assert [int(x.shape[0]) for x, _ in batches] == [16, 16, 8]
    x, y = batches[0]
    assert x.shape == (16, 32, 32, 3) and x.dtype == tf.float32
    assert y.shape == (16,) and y.dtype == tf.int64
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert labels.min() >= 0 and labels.max() < 10


def test_a_pass_cut_short_leaves_every_later_pass_whole():
    # TensorFlow's shared memory cache, filled by a pass that was cut short, lost or repeated
    # examples in about 1 of 10 trials (64 or 66 of 128); `load` fills the cache itself.
    for _ in range(6):
        ds = data.load("cifar10", "test[:128]", batch_size=64)
        first = next(iter(ds))[1].numpy()
        _, labels = _materialise(ds)
        assert labels.shape == (128,)
        np.testing.assert_array_equal(labels[:64], first)
        np.testing.assert_array_equal(_materialise(ds)[1], labels)


@pytest.mark.parametrize(
    "kwargs", [{}, {"augment": True}, {"deterministic": True}], ids=["plain", "augment", "det"]
)
def test_autotuner_is_off_and_stays_off_downstream(kwargs):
    # With the autotuner on, deleting an iterator waited for its thread's next wake-up (up to
    # 60 s; measured, not asserted here: the tests do not time anything). Datasets built on a
    # loaded one inherit the option, e.g. the shuffled cached-logit pipeline of recipes.apprentice.
    ds = data.load("cifar10", "test[:32]", batch_size=16, **kwargs)
    assert ds.options().autotune.enabled is False
    derived = ds.unbatch().shuffle(32, seed=0).batch(8).prefetch(tf.data.AUTOTUNE)
    assert derived.options().autotune.enabled is False
    assert (ds.options().deterministic is True) == bool(kwargs.get("deterministic"))
    assert data.is_deterministic(ds) == bool(kwargs.get("deterministic"))


def test_cifar10_normalisation_is_per_channel_standard():
    images, _ = _materialise(data.load("cifar10", "train[:512]", 512, deterministic=True))
    mean = images.mean(axis=(0, 1, 2))
    std = images.std(axis=(0, 1, 2))
    np.testing.assert_allclose(mean, 0.0, atol=0.1)
    np.testing.assert_allclose(std, 1.0, atol=0.1)


def test_cifar10_matches_raw_tfds_after_normalisation():
    raw = tfds.load("cifar10", split="test[:8]", as_supervised=True, batch_size=-1)
    raw_images, raw_labels = (t.numpy() for t in raw)
    images, labels = _materialise(data.load("cifar10", "test[:8]", 8))
    mean, std = data.SMALL_IMAGE_STATS["cifar10"]
    np.testing.assert_allclose(images, (raw_images / 255.0 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(labels, raw_labels)


def test_augmentation_changes_pixels_keeps_shape_and_labels():
    # A test split is never shuffled, so plain and augmented elements line up.
    plain_x, plain_y = _materialise(data.load("cifar10", "test[:64]", 32))
    aug = data.load("cifar10", "test[:64]", 32, augment=True)
    aug_x, aug_y = _materialise(aug)
    assert aug_x.shape == plain_x.shape == (64, 32, 32, 3)
    np.testing.assert_array_equal(aug_y, plain_y)
    changed = np.any(np.abs(aug_x - plain_x) > 1e-6, axis=(1, 2, 3))
    assert changed.mean() > 0.5  # a few examples draw the identity crop and no flip
    # Augmentation is redrawn every epoch.
    aug_x2, _ = _materialise(aug)
    assert np.any(np.abs(aug_x2 - aug_x) > 1e-6)


def test_same_seed_reproduces_shuffle_and_augmentation():
    first = _materialise(data.load("cifar10", "train[:64]", 64, augment=True, seed=3))
    second = _materialise(data.load("cifar10", "train[:64]", 64, augment=True, seed=3))
    other = _materialise(data.load("cifar10", "train[:64]", 64, augment=True, seed=4))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_train_split_is_reshuffled_each_epoch():
    ds = data.load("cifar10", "train[:64]", 64)
    (x1, y1), (x2, y2) = _materialise(ds), _materialise(ds)
    assert not np.array_equal(x1, x2)
    np.testing.assert_array_equal(np.sort(y1), np.sort(y2))
    assert not data.is_deterministic(ds)


def test_deterministic_mode_repeats_order_and_is_marked():
    ds = data.load("cifar10", "train[:48]", 16, deterministic=True)
    (x1, y1), (x2, y2) = _materialise(ds), _materialise(ds)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    # Same order as the raw tfds records: no shuffling.
    raw_labels = tfds.load("cifar10", split="train[:48]", as_supervised=True, batch_size=-1)[1]
    np.testing.assert_array_equal(y1, raw_labels.numpy())
    assert ds.options().deterministic is True
    assert data.is_deterministic(ds)
    # Anything derived from it, or built elsewhere, is not vouched for.
    assert not data.is_deterministic(ds.map(lambda x, y: (x, y)))
    assert not data.is_deterministic(ds.shuffle(4))
    assert not data.is_deterministic(tf.data.Dataset.range(3))
    marked_elsewhere = tf.data.Dataset.range(3)
    options = tf.data.Options()
    options.deterministic = True
    assert not data.is_deterministic(marked_elsewhere.with_options(options))
    assert not data.is_deterministic([1, 2, 3])


def test_augment_with_deterministic_raises():
    with pytest.raises(ValueError, match="teacher logits"):
        data.load("cifar10", "train[:8]", 8, augment=True, deterministic=True)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "8"])
def test_bad_batch_size_raises(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        data.load("cifar10", "test[:8]", batch_size)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"shuffle_buffer": -1}, "shuffle_buffer"),
        ({"image_size": 0}, "image_size"),
        ({"split": ""}, "split"),
    ],
)
def test_bad_arguments_raise(kwargs, argument):
    args = {"name": "cifar10", "split": "test[:8]", "batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=argument):
        data.load(**args)


def test_bad_name_raises():
    with pytest.raises(ValueError, match="not_a_dataset"):
        data.load("not_a_dataset", "train", 8)
    with pytest.raises(ValueError, match="name"):
        data.num_classes("not_a_dataset")


def test_non_image_classification_dataset_raises():
    with pytest.raises(ValueError, match="image"):
        data.info("imdb_reviews")


def test_num_classes_from_builder_info():
    assert data.num_classes("cifar10") == 10
    assert data.num_classes("cifar100") == 100
    assert data.num_classes("svhn_cropped") == 10
    assert data.num_classes("imagenet2012") == 1000


def test_explicit_data_dir():
    ds = data.load("cifar10", "test[:4]", 4, data_dir=os.environ["TFDS_DATA_DIR"])
    x, y = next(iter(ds))
    assert x.shape == (4, 32, 32, 3)


def test_image_size_resizes_small_datasets():
    x, _ = next(iter(data.load("cifar10", "test[:4]", 4, image_size=40, augment=True)))
    assert x.shape == (4, 40, 40, 3)


@pytest.mark.parametrize("augment", [False, True])
def test_svhn_pipeline_on_mock_data(augment):
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load("svhn_cropped", "train", 4, augment=augment)
        x, y = next(iter(ds))
    assert x.shape == (4, 32, 32, 3) and x.dtype == tf.float32
    assert y.dtype == tf.int64


@pytest.mark.parametrize("augment", [False, True])
def test_imagenet_pipeline_on_mock_data(augment):
    # Mock ImageNet images have random sizes; the output is always 224x224x3.
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load("imagenet2012", "train", 3, augment=augment, cache=False)
        batches = list(ds.take(2))
    for x, y in batches:
        assert x.shape == (3, 224, 224, 3) and x.dtype == tf.float32
        assert y.dtype == tf.int64
        assert np.all(np.isfinite(x.numpy()))
        assert np.all((y.numpy() >= 0) & (y.numpy() < 1000))


def test_imagenet_style_image_size_and_grayscale_datasets():
    with tfds.testing.mock_data(num_examples=4):
        x, _ = next(iter(data.load("imagenet2012", "validation", 2, image_size=64)))
        assert x.shape == (2, 64, 64, 3)
        # MNIST is grayscale: repeated to three channels, ImageNet-style preprocessing.
        x, _ = next(iter(data.load("mnist", "train", 2, augment=True)))
        assert x.shape == (2, 224, 224, 3)
