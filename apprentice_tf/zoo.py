"""Reference networks trained by this project's recipes, loaded by name and checked by sha256.

    import apprentice_tf as atf
    student = atf.zoo.load("cifar10/resnet20")     # a trained float ResNet-20 (Keras model)
    atf.zoo.names()                                 # ['cifar10/resnet20', ...]
    atf.zoo.info("cifar10/resnet20").test_top1      # its accuracy on the full CIFAR-10 test split

Each entry is a directory of ``apprentice_tf/weights/<dataset>_<model>/`` shipped inside the
package (no network access): ``float.weights.h5`` (the weights), ``float.csv`` (the training log,
one line per epoch) and ``results.json``, written by `recipes.pretrain` when it trained the network:
the command that trained it, its configuration (epochs, schedule, seed), its top-1 on the full test
split in Keras and in LiteRT, and the sha256 of the weights file. `load` builds the architecture
with the package's own builders (`apprentice_tf.models.cifar_resnet`), checks the file's sha256
against ``results.json`` before reading it, and loads the weights; a mismatch or an unknown name
is a `ValueError` that says what was expected. The idea follows larq/zoo: a model is a function
call, and its provenance is documented next to its weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from apprentice_tf.compat import keras
from apprentice_tf.models import cifar_resnet

__all__ = ["ZooEntry", "WEIGHTS_DIR", "names", "info", "load", "sha256"]

#: Where the shipped entries live (one directory per entry).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_WEIGHTS_FILE = "float.weights.h5"
_RESULTS_FILE = "results.json"
_LOG_FILE = "float.csv"


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """What the zoo knows of one reference network.

    Attributes:
      name: ``"<dataset>/<model>"``, e.g. ``"cifar10/resnet56"``.
      dataset: the tfds dataset it was trained on.
      model: the CIFAR ResNet name, ``resnet<6n+2>``.
      width: its width multiplier.
      num_classes: outputs of its logits layer.
      test_top1: top-1 on the full test split (Keras).
      tflite_top1: top-1 of its float .tflite file under LiteRT on the same split.
      epochs: training epochs in all: its own and, for a warm restart (``--initial_weights``),
        those of the weights it started from.
      command: the shell command that trained it (`recipes.pretrain`).
      initial_command: for a warm restart, the command that trained the weights it started from
        (their sha256 is in its results.json); else "".
      sha256: sha256 of its weights file.
      directory: the entry's directory (weights, training log, results.json).
    """

    name: str
    dataset: str
    model: str
    width: float
    num_classes: int
    test_top1: float
    tflite_top1: float
    epochs: int
    command: str
    initial_command: str
    sha256: str
    directory: Path

    @property
    def weights(self) -> Path:
        """The weights file."""
        return self.directory / _WEIGHTS_FILE

    @property
    def training_log(self) -> Path:
        """The CSV training log, one line per epoch."""
        return self.directory / _LOG_FILE


def _read_entry(directory: Path) -> ZooEntry:
    results = json.loads((directory / _RESULTS_FILE).read_text())
    config = results["config"]
    row = results["rows"][0]
    initial = results.get("initial_weights") or {}
    return ZooEntry(
        name=f"{config['dataset']}/{config['model']}",
        dataset=config["dataset"],
        model=config["model"],
        width=float(config["width"]),
        num_classes=int(results.get("num_classes", 10)),
        test_top1=float(row["keras_top1"]),
        tflite_top1=float(row["tflite_top1"]),
        epochs=int(config["epochs"]) + int(initial.get("epochs", 0)),
        command=results["command"],
        initial_command=initial.get("command", ""),
        sha256=results["sha256"],
        directory=directory,
    )


def _entries(root: Path) -> dict[str, ZooEntry]:
    if not root.is_dir():
        return {}
    entries = (_read_entry(d) for d in sorted(root.iterdir()) if (d / _RESULTS_FILE).is_file())
    return {entry.name: entry for entry in entries}


def names(root: str | os.PathLike | None = None) -> list[str]:
    """The names of the reference networks in `root` (default: the ones shipped, `WEIGHTS_DIR`)."""
    return sorted(_entries(Path(root) if root is not None else WEIGHTS_DIR))


def info(name: str, root: str | os.PathLike | None = None) -> ZooEntry:
    """The `ZooEntry` of `name`: how it was trained and how accurate it is.

    Raises:
      ValueError: `name` is not a known entry (the message lists the known ones).
    """
    entries = _entries(Path(root) if root is not None else WEIGHTS_DIR)
    if name not in entries:
        raise ValueError(
            f"atf.zoo: unknown network {name!r}; known: {sorted(entries) or 'none'} "
            f"(in {Path(root) if root is not None else WEIGHTS_DIR})."
        )
    return entries[name]


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (what `load` checks a weights file against)."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(name: str, root: str | os.PathLike | None = None) -> keras.Model:
    """Build reference network `name` with the package's builders and load its checked weights.

    Args:
      name: an entry of `names`, e.g. ``"cifar10/resnet20"``.
      root: a directory of entries laid out like `WEIGHTS_DIR` (default: the shipped ones).

    Returns:
      A float functional Keras model (tf_keras) that returns logits, named after the entry.

    Raises:
      ValueError: an unknown name, or a weights file whose sha256 differs from the one recorded
        when it was trained (a corrupted or replaced file: reinstall the package).
      FileNotFoundError: the entry's weights file is missing.
    """
    entry = info(name, root)
    if not entry.weights.is_file():
        raise FileNotFoundError(
            f"atf.zoo: {name!r} has no weights file {entry.weights}; reinstall apprentice_tf."
        )
    actual = sha256(entry.weights)
    if actual != entry.sha256:
        raise ValueError(
            f"atf.zoo: {entry.weights} has sha256 {actual}, expected {entry.sha256} for {name!r}: "
            "the file is corrupted or was replaced; reinstall apprentice_tf."
        )
    depth = int(entry.model.removeprefix("resnet"))
    model = cifar_resnet(
        depth,
        num_classes=entry.num_classes,
        width_multiplier=entry.width,
        name=entry.name.replace("/", "_"),
    )
    model.load_weights(entry.weights)
    return model
