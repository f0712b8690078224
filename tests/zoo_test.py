"""apprentice_tf.zoo: entries are found by name, their sha256 is checked, errors say what to do."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_zoo_entry

from apprentice_tf import zoo
from apprentice_tf.models import cifar_resnet


def test_load_builds_the_network_and_loads_its_weights(tmp_path):
    directory = make_zoo_entry(tmp_path)
    assert zoo.names(tmp_path) == ["cifar10/resnet8"]
    entry = zoo.info("cifar10/resnet8", tmp_path)
    assert entry.test_top1 == 0.5 and entry.epochs == 1 and "--model=resnet8" in entry.command
    model = zoo.load("cifar10/resnet8", tmp_path)
    expected = cifar_resnet(8, num_classes=10, width_multiplier=0.25)
    expected.load_weights(directory / "float.weights.h5")
    for actual, wanted in zip(model.get_weights(), expected.get_weights(), strict=True):
        np.testing.assert_array_equal(actual, wanted)


def test_a_warm_restart_counts_the_epochs_of_the_weights_it_started_from(tmp_path):
    directory = make_zoo_entry(tmp_path)
    assert zoo.info("cifar10/resnet8", tmp_path).initial_command == ""
    results = json.loads((directory / "results.json").read_text())
    first = "python -m recipes.pretrain --model=resnet8 --epochs=15"
    results["initial_weights"] = {"epochs": 15, "command": first, "sha256": "0" * 64}
    (directory / "results.json").write_text(json.dumps(results))
    entry = zoo.info("cifar10/resnet8", tmp_path)
    assert (entry.epochs, entry.initial_command) == (16, first)


def test_unknown_name_lists_the_known_ones(tmp_path):
    make_zoo_entry(tmp_path)
    with pytest.raises(ValueError, match=r"unknown network 'cifar10/resnet99'.*cifar10/resnet8"):
        zoo.load("cifar10/resnet99", tmp_path)


def test_a_changed_weights_file_is_refused_before_loading(tmp_path):
    directory = make_zoo_entry(tmp_path)
    weights = directory / "float.weights.h5"
    other = tmp_path / "other"
    shutil.copy(make_zoo_entry(other, "resnet8") / "float.weights.h5", weights)
    with pytest.raises(ValueError, match="sha256 .* expected .*reinstall"):
        zoo.load("cifar10/resnet8", tmp_path)


def test_a_missing_weights_file_says_so(tmp_path):
    directory = make_zoo_entry(tmp_path)
    (directory / "float.weights.h5").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        zoo.load("cifar10/resnet8", tmp_path)


def test_every_shipped_entry_loads_and_documents_its_training():
    for name in zoo.names():
        entry = zoo.info(name)
        assert entry.command.startswith("python -m recipes.pretrain")
        assert entry.training_log.is_file()
        assert 0.0 < entry.test_top1 <= 1.0
        model = zoo.load(name)
        assert int(model.output_shape[-1]) == entry.num_classes
