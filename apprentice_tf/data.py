"""tensorflow-datasets input pipelines for the Apprentice experiments.

Mishra & Marr, "Apprentice: Using Knowledge Distillation Techniques To Improve Low-Precision
Network Accuracy" (ICLR 2018) train on CIFAR-10 and ImageNet (ILSVRC-2012) with the standard
augmentation of each: for 32x32 datasets the 4-pixel pad, random 32x32 crop and horizontal flip of
He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016); for ImageNet the
random-resized ("Inception") crop of Szegedy et al., "Going Deeper with Convolutions" (CVPR 2015)
and a 256-resize / 224 center crop for evaluation.

Every dataset is read with ``tfds.load(name, split=split, as_supervised=True, data_dir=data_dir)``:
there is no local path in this module. Without internet, tfds reads a prepared copy from the
directory in the standard ``TFDS_DATA_DIR`` environment variable (or ``data_dir``).

Pipeline order (deliberate):

1. ``tfds.load``: decoded ``uint8`` images, ``int64`` labels.
2. ``cache()`` (if ``cache=True``): the decoded images are held in memory *before* any random
   operation, so every epoch sees fresh augmentation and decoding happens once. The cache is
   filled by `load` itself (one pass over the split), because TensorFlow's shared memory cache
   can end up with lost or repeated examples when a pass that fills it is cut short. For a full
   ImageNet split this needs a lot of memory: pass ``cache=False`` there.
3. ``shuffle(shuffle_buffer, seed)``: only for a training split, never in deterministic mode.
4. ``map(preprocess)``: augmentation (stateless random ops driven by a seeded random stream), then
   per-channel normalisation to ``float32``.
5. ``batch(batch_size)`` then ``prefetch(AUTOTUNE)``, with tf.data's autotuner off (it made
   deleting an iterator wait up to a minute; see `load`).

Deterministic mode (``deterministic=True``) exists for teacher-logit caching in distillation: the
teacher's logits for the k-th example must belong to the same image every epoch. It forbids
shuffling and augmentation and sets ``tf.data.Options.deterministic``; :func:`is_deterministic`
lets callers check that a dataset came from this mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow_datasets as tfds

from apprentice_tf.compat import tf

__all__ = [
    "load",
    "num_classes",
    "info",
    "is_deterministic",
    "SMALL_IMAGE_STATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

# Per-channel mean and standard deviation of the training split, pixels scaled to [0, 1].
SMALL_IMAGE_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
# Datasets whose horizontal mirror is still a valid example (digits are not).
_FLIP_OK = {"cifar10", "cifar100"}
_SMALL_SIZE = 32
_PAD = 4

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_IMAGENET_SIZE = 224
_IMAGENET_RESIZE_RATIO = 256 / 224
_CROP_SCALE = (0.08, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)

_DETERMINISTIC_ATTR = "_atf_deterministic"


def info(name: str, data_dir: str | None = None) -> tfds.core.DatasetInfo:
    """Return the tfds ``DatasetInfo`` of an image-classification dataset.

    The Apprentice paper (Mishra & Marr, ICLR 2018) uses CIFAR-10 and ImageNet; any tfds dataset
    with an ``image`` feature and a ``label`` ClassLabel feature is accepted.

    Args:
      name: a tfds dataset name, e.g. ``"cifar10"`` or ``"imagenet2012"``.
      data_dir: tfds data directory; ``None`` lets tfds use ``TFDS_DATA_DIR`` or its default.

    Raises:
      ValueError: `name` is not a registered tfds dataset, or it has no ``image``/``label``
        features.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty tfds dataset name, received {name!r}.")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"`name` must be a tensorflow-datasets image-classification dataset (e.g. "
            f"{sorted(SMALL_IMAGE_STATS)} or 'imagenet2012'), received {name!r}: {e}"
        ) from e
    features = builder.info.features
    keys = set(features.keys()) if isinstance(features, tfds.features.FeaturesDict) else set()
    image = features["image"] if "image" in keys else None
    label = features["label"] if "label" in keys else None
    if not isinstance(image, tfds.features.Image) or not isinstance(
        label, tfds.features.ClassLabel
    ):
        raise ValueError(
            f"`name` must be an image-classification dataset with an `image` Image feature and a "
            f"`label` ClassLabel feature, received {name!r} with features {features}."
        )
    return builder.info


def num_classes(name: str, data_dir: str | None = None) -> int:
    """Number of classes of dataset `name`, read from its tfds builder info.

    Used to size the logits layer of teacher and student (Mishra & Marr, ICLR 2018): 10 for
    CIFAR-10, 1000 for ImageNet.

    Args:
      name: a tfds dataset name.
      data_dir: tfds data directory; ``None`` lets tfds use ``TFDS_DATA_DIR`` or its default.

    Raises:
      ValueError: as :func:`info`.
    """
    return int(info(name, data_dir=data_dir).features["label"].num_classes)


def is_deterministic(ds: tf.data.Dataset) -> bool:
    """True if `ds` was returned by ``load(..., deterministic=True)`` and is still deterministic.

    Teacher-logit caching for distillation (Hinton et al., "Distilling the Knowledge in a Neural
    Network", 2015; Mishra & Marr, ICLR 2018) is only correct when the k-th element is the same
    image every epoch. This checks both ``ds.options().deterministic`` and the marker that
    :func:`load` attaches to the dataset it returns; any dataset derived from it afterwards
    (``map``, ``shuffle``, ...) is a new object without the marker and is reported as not
    deterministic.
    """
    if not isinstance(ds, tf.data.Dataset):
        return False
    if ds.options().deterministic is not True:
        return False
    return bool(getattr(ds, _DETERMINISTIC_ATTR, False))


def _is_train_split(split: str) -> bool:
    """True if every part of a tfds split expression ("train[:90%]+train[95%:]") is "train"."""
    parts = [p.strip() for p in split.split("+")]
    return all(p.split("[", 1)[0].strip() == "train" for p in parts)


def _normalise(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """(image / 255 - mean) / std, per channel, as float32."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _to_rgb(image: tf.Tensor, channels: int | None) -> tf.Tensor:
    """Grayscale to RGB, RGBA to RGB; RGB unchanged."""
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    return image


def _small_preprocess(name: str, size: int, augment: bool):
    """Preprocessing for 32x32 datasets: optional resize, pad-crop-flip, normalise."""
    mean, std = SMALL_IMAGE_STATS[name]
    flip = name in _FLIP_OK

    def fn(image, label, seed=None):
        image = tf.ensure_shape(image, [None, None, 3])
        if size != _SMALL_SIZE:
            image = tf.saturate_cast(tf.round(tf.image.resize(image, [size, size])), tf.uint8)
        if augment:
            seeds = tf.random.experimental.stateless_split(seed, num=2)
            image = tf.pad(image, [[_PAD, _PAD], [_PAD, _PAD], [0, 0]])
            image = tf.image.stateless_random_crop(image, [size, size, 3], seed=seeds[0])
            if flip:
                image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
        image = tf.ensure_shape(_normalise(image, mean, std), [size, size, 3])
        return image, tf.cast(label, tf.int64)

    return fn


def _imagenet_preprocess(size: int, channels: int | None, augment: bool):
    """ImageNet-style preprocessing: random-resized crop + flip (train) or resize + center crop."""

    def fn(image, label, seed=None):
        image = _to_rgb(image, channels)
        image = tf.ensure_shape(image, [None, None, 3])
        if augment:
            seeds = tf.random.experimental.stateless_split(seed, num=2)
            begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(image),
                bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
                seed=seeds[0],
                min_object_covered=0.0,
                aspect_ratio_range=_CROP_RATIO,
                area_range=_CROP_SCALE,
                max_attempts=10,
                use_image_if_no_bounding_boxes=True,
            )
            image = tf.slice(image, begin, crop_size)
            image = tf.image.resize(image, [size, size], method="bilinear", antialias=False)
            image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
        else:
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            resize = tf.round(size * _IMAGENET_RESIZE_RATIO)
            scale = resize / tf.reduce_min(shape)
            new_shape = tf.cast(tf.math.maximum(tf.round(shape * scale), float(size)), tf.int32)
            image = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
            image = tf.image.resize_with_crop_or_pad(image, size, size)
        image = tf.clip_by_value(image, 0.0, 255.0)
        image = tf.ensure_shape(_normalise(image, IMAGENET_MEAN, IMAGENET_STD), [size, size, 3])
        return image, tf.cast(label, tf.int64)

    return fn


def _fill_cache(ds: tf.data.Dataset) -> None:
    """Read a ``cache()``d dataset once to the end, so that its in-memory cache is complete.

    TensorFlow's memory cache is shared by every iterator of the dataset. An iterator abandoned
    while the cache is still being filled (``next(iter(ds))``, a prefetching pass cut short)
    races with the next one: measured on TF 2.21, a full pass after ``next(iter(ds))`` on
    ``cifar10 test[:128]`` gave 64 or 66 examples in 4 of 40 trials, and the wrong cache then
    stays. Once complete, the cache is only read, and partial passes are safe.
    """
    ds.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)


def load(
    name: str,
    split: str,
    batch_size: int,
    augment: bool = False,
    deterministic: bool = False,
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    image_size: int | None = None,
    cache: bool = True,
    data_dir: str | None = None,
) -> tf.data.Dataset:
    """A batched ``(image, label)`` pipeline over ``tfds.load(name, split=split, ...)``.

    Images are ``float32``, normalised per channel as ``(x / 255 - mean) / std``; labels are
    ``int64`` class indices. The preprocessing follows the papers the Apprentice experiments
    (Mishra & Marr, ICLR 2018) build on:

    * ``cifar10``, ``cifar100``, ``svhn_cropped`` (32x32): the dataset's own training-set
      mean/std; with ``augment``, a 4-pixel zero pad, a random 32x32 crop and (CIFAR only, since a
      mirrored digit is not the same digit) a random horizontal flip (He et al., CVPR 2016).
    * ``imagenet2012`` and any other tfds dataset with ``image``/``label`` features: ImageNet
      mean/std; with ``augment``, a random-resized crop (area 8%-100%, aspect ratio 3/4-4/3,
      Szegedy et al., CVPR 2015) to ``image_size`` and a random horizontal flip; without it, a
      resize of the short side to ``image_size * 256 / 224`` and a central ``image_size`` crop.
      Grayscale images are repeated to three channels.

    Args:
      name: tfds dataset name.
      split: tfds split expression, passed through (e.g. ``"train[:10%]"``, ``"test"``).
      batch_size: examples per batch, ``>= 1``. The last batch may be smaller.
      augment: apply the random training augmentation above.
      deterministic: same elements in the same order on every iteration: no shuffling, no
        augmentation, ``tf.data.Options.deterministic = True``, and a marker checked by
        :func:`is_deterministic`. Needed for caching a teacher's logits per example.
      shuffle_buffer: shuffle buffer size for training splits (every part of `split` named
        ``train``); ``0`` disables shuffling. Ignored in deterministic mode.
      seed: seed for file order, the shuffle, and the augmentation's random stream.
      image_size: output side length. Default 32 for the 32x32 datasets (another value resizes
        first) and 224 for ImageNet-style datasets.
      cache: cache the decoded ``uint8`` images in memory before shuffling and augmentation;
        the split is read once here to fill the cache.
      data_dir: tfds data directory; ``None`` lets tfds use ``TFDS_DATA_DIR`` or its default.

    Returns:
      A ``tf.data.Dataset`` of ``(images [B, S, S, 3] float32, labels [B] int64)``.

    Raises:
      ValueError: unknown or non-image-classification `name`; `batch_size`, `shuffle_buffer` or
        `image_size` out of range; ``augment=True`` with ``deterministic=True``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, received {batch_size!r}.")
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a non-empty tfds split string, received {split!r}.")
    if (
        isinstance(shuffle_buffer, bool)
        or not isinstance(shuffle_buffer, int)
        or shuffle_buffer < 0
    ):
        raise ValueError(f"`shuffle_buffer` must be an integer >= 0, received {shuffle_buffer!r}.")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(f"`image_size` must be None or an integer >= 1, received {image_size!r}.")
    if augment and deterministic:
        raise ValueError(
            "`augment=True` cannot be combined with `deterministic=True`: random augmentation "
            "gives a different image for the same example each epoch, so per-example teacher "
            "logits would not be reproducible. Received augment=True, deterministic=True; "
            "allowed: deterministic=True with augment=False."
        )
    ds_info = info(name, data_dir=data_dir)

    shuffle = not deterministic and shuffle_buffer > 0 and _is_train_split(split)
    ds = tfds.load(
        name,
        split=split,
        as_supervised=True,
        data_dir=data_dir,
        shuffle_files=shuffle,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )
    if name in SMALL_IMAGE_STATS:
        preprocess = _small_preprocess(name, image_size or _SMALL_SIZE, augment)
    else:
        channels = ds_info.features["image"].shape[-1]
        preprocess = _imagenet_preprocess(image_size or _IMAGENET_SIZE, channels, augment)

    if cache:
        ds = ds.cache()
        _fill_cache(ds)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if augment:
        # One [2]-shaped seed per example for the stateless random ops; a fresh stream each epoch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda example, s: preprocess(*example, seed=s),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    # tf.data's autotuner runs a thread that sleeps 10 ms, 20 ms, ... doubling to 60 s between
    # rounds, and deleting an iterator waits for its current sleep to end: with TF 2.21 on 2
    # cores, every pass over the 10,000 test images that ended between 20.5 s and 41 s after it
    # began was held until 41 s (25 s of work took 41 s), and Keras deletes an iterator after
    # every evaluation and every fit. Without the autotuner the AUTOTUNE parallelism above stays
    # at min(16, CPU cores), which keeps up with training here, and nothing waits.
    options.autotune.enabled = False
    if deterministic:
        # Otherwise tf.data's default (order-preserving) applies: with a fixed `seed`, shuffling and
        # augmentation are then reproducible from run to run as well.
        options.deterministic = True
    ds = ds.with_options(options)
    if deterministic:
        setattr(ds, _DETERMINISTIC_ATTR, True)
    return ds
