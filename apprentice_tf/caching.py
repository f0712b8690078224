"""Teacher-logit caching: run a frozen teacher once, reuse its logits every epoch.

Scheme B of Mishra & Marr (ICLR 2018, arXiv:1711.05852) distils from a frozen teacher, whose
logits z_T(x) do not change during training; `cache_teacher_logits` computes them once and
returns ``(x, y, teacher_logits)`` data that `apprentice_tf.distiller.Distiller` accepts in place
of running the teacher at every step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from apprentice_tf import _checks, data
from apprentice_tf.compat import keras, tf

__all__ = ["cache_teacher_logits"]


def _check_deterministic(dataset: tf.data.Dataset, assume_deterministic: bool) -> None:
    why = (
        "Cached logits are paired with examples by position, so the dataset must give the same "
        "examples, in the same order and without random augmentation, on every pass: shuffling "
        "or random augmentation would pair an example with another example's (or another "
        "view's) logits. Cache an un-shuffled, un-augmented dataset, and shuffle the returned "
        "one (cache unbatched data with batch_size=..., then .shuffle().batch())."
    )
    if dataset.options().deterministic is False:
        raise ValueError(
            "cache_teacher_logits: the dataset has options().deterministic == False (elements "
            "may come in a different order on each pass). " + why
        )
    if assume_deterministic:
        return
    if not data.is_deterministic(dataset):
        raise ValueError(
            "cache_teacher_logits: apprentice_tf.data.is_deterministic() says this dataset is "
            "not deterministic (it only vouches for datasets returned by "
            "apprentice_tf.data.load(..., deterministic=True), unmodified). " + why + " If you "
            "know your pipeline is deterministic, pass assume_deterministic=True."
        )


def _to_numpy(structure: Any) -> Any:
    return tf.nest.map_structure(lambda t: np.asarray(t), structure)


def _same(first: Any, second: Any) -> bool:
    try:
        tf.nest.assert_same_structure(first, second)
    except (ValueError, TypeError):
        return False
    return all(
        a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(second), strict=True)
    )


def cache_teacher_logits(
    teacher: keras.Model,
    dataset: tf.data.Dataset,
    batch_size: int | None = None,
    *,
    assume_deterministic: bool = False,
    verbose: int = 1,
) -> tf.data.Dataset:
    """Run a frozen teacher once over ``(x, y)`` data; return ``(x, y, teacher_logits)`` data.

    Scheme B of Mishra & Marr (ICLR 2018): a frozen teacher's logits z_T(x) do not change, so
    they can be computed once and reused every epoch. The teacher runs in inference mode
    (``training=False``); its logits are kept in memory as a NumPy array (CIFAR-10: 50k × 10
    floats, 2 MB; ImageNet-sized caches belong on disk instead) and zipped with the dataset, so
    the returned dataset re-reads ``x`` and ``y`` from ``dataset`` on every pass.

    Refused, because they would pair an example with another example's logits: a dataset with
    ``options().deterministic == False``; a dataset that `apprentice_tf.data.is_deterministic`
    does not vouch for (only datasets from ``apprentice_tf.data.load(..., deterministic=True)``),
    unless ``assume_deterministic=True``; and a dataset whose first batch differs between two
    passes (shuffling that reshuffles each pass, unseeded random augmentation). Limits of the
    detection: only the first batch is compared, so a pipeline that shuffles or augments only
    later elements, or whose randomness repeats on the second pass but not the third, is not
    caught. A stateful random op (``tf.random.normal``) in a ``map`` under a global seed
    (``keras.utils.set_random_seed``) repeats the same values on every pass: that pipeline is
    deterministic, is accepted, and its logits are correctly paired (but each example keeps one
    augmented view). Shuffle *after* caching: cache unbatched data with ``batch_size``, then call
    ``.shuffle(...).batch(...)`` on the result.

    Args:
      teacher: tf_keras model returning logits.
      dataset: finite dataset of ``(x, y)`` pairs. With ``batch_size=None`` its elements are
        batches; with ``batch_size`` they are single examples, run through the teacher in
        batches of ``batch_size``.
      batch_size: see ``dataset``.
      assume_deterministic: vouch for a dataset `apprentice_tf.data.is_deterministic` does not
        know (e.g. ``from_tensor_slices``); the other checks still run.
      verbose: 1 shows a `keras.utils.Progbar`, 0 is silent.

    Returns:
      A dataset of ``(x, y, teacher_logits)`` with the same order and batching as ``dataset``;
      the logits are float32.

    Raises:
      ValueError: a non-deterministic, infinite, empty or non-``(x, y)`` dataset, a bad
        ``batch_size``, or a teacher that is not a tf_keras Model.
    """
    _checks.keras_object("cache_teacher_logits", "teacher", teacher, keras.Model)
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"cache_teacher_logits: `dataset` must be a tf.data.Dataset, received "
            f"{type(dataset).__name__}."
        )
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(
            "cache_teacher_logits: `dataset` must yield (x, y) pairs, received elements with "
            f"spec {spec}."
        )
    if batch_size is not None:
        batch_size = _checks.integer("cache_teacher_logits", "batch_size", batch_size, 1)
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "cache_teacher_logits: `dataset` is infinite (e.g. .repeat()); cache one pass and "
            "repeat the returned dataset."
        )
    _check_deterministic(dataset, assume_deterministic)

    batches = dataset if batch_size is None else dataset.batch(int(batch_size))
    predict = tf.function(lambda x: teacher(x, training=False), reduce_retracing=True)
    cardinality = int(batches.cardinality())
    progbar = keras.utils.Progbar(
        cardinality if cardinality >= 0 else None, verbose=verbose, unit_name="batch"
    )
    logits: list[np.ndarray] = []
    first = None
    for step, (x, y) in enumerate(batches):
        if first is None:
            first = _to_numpy((x, y))
        logits.append(np.asarray(predict(x), dtype=np.float32))
        progbar.update(step + 1)
    if first is None:
        raise ValueError("cache_teacher_logits: `dataset` is empty.")
    if logits[0].ndim != 2:
        raise ValueError(
            "cache_teacher_logits: the teacher must return logits of shape (batch, classes), "
            f"returned shape {logits[0].shape}."
        )
    replay = _to_numpy(next(iter(batches)))
    if not _same(first, replay):
        raise ValueError(
            "cache_teacher_logits: the dataset's first batch differed between two passes (it is "
            "shuffled each pass or randomly augmented). Cached logits are paired with examples "
            "by position, so this would pair an example with another example's logits. Cache "
            "an un-shuffled, un-augmented dataset and shuffle the returned one."
        )

    everything = np.concatenate(logits, axis=0)
    if batch_size is not None:
        logits_ds = tf.data.Dataset.from_tensor_slices(everything)
    else:
        sizes = [len(batch) for batch in logits]
        if all(size == sizes[0] for size in sizes[:-1]) and sizes[-1] <= sizes[0]:
            logits_ds = tf.data.Dataset.from_tensor_slices(everything).batch(sizes[0])
        else:  # irregular batches: one slice per batch
            bounds = np.cumsum([0, *sizes])
            ragged = tf.RaggedTensor.from_row_splits(everything, bounds)
            logits_ds = tf.data.Dataset.from_tensor_slices(ragged).map(
                lambda row: row.to_tensor() if isinstance(row, tf.RaggedTensor) else row
            )
    return tf.data.Dataset.zip((dataset, logits_ds)).map(lambda xy, z: (xy[0], xy[1], z))
