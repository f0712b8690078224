"""Long work shows progress with a known total: every pipeline a recipe fits on knows its length.

Keras prints ``k/N`` only when ``dataset.cardinality()`` is known; an unknown one shows
``k/Unknown`` for the whole first epoch.
"""

from __future__ import annotations

import math

import pytest

from apprentice_tf import data
from apprentice_tf.compat import tf


@pytest.mark.parametrize("augment", [False, True])
def test_load_knows_how_many_batches_it_yields(augment):
    ds = data.load("cifar10", "train[:300]", 64, augment=augment)
    assert int(ds.cardinality()) == math.ceil(300 / 64) == sum(1 for _ in ds)


def test_rebatched_cached_pairs_keep_a_known_total():
    """The recipes' cached-logit pipeline: unbatch, shuffle, batch, then assert the total."""
    base = data.load("cifar10", "test[:200]", 64, deterministic=True)
    steps = int(base.cardinality())
    rebatched = (
        base.unbatch()
        .shuffle(256, seed=0)
        .batch(64)
        .apply(tf.data.experimental.assert_cardinality(steps))
    )
    assert int(base.unbatch().shuffle(256).batch(64).cardinality()) < 0  # what unbatch loses
    assert int(rebatched.cardinality()) == steps == sum(1 for _ in rebatched)
