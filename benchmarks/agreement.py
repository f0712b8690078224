"""Keras/TFLite agreement of *trained* low-precision networks over the full CIFAR-10 test split.

    nice -n 10 python -m benchmarks.agreement [--epochs=1 --work_dir=/tmp/atf_agreement]

The networks are the ones a user of scheme C gets: the zoo's trained float ResNet-20
(``cifar10/resnet20``, 87.4% top-1) is lowered with `apprentice_tf.quantize_model` to ternary W2A8
and to 4-bit W4A8 and each is fine-tuned for ``--epochs`` on the full train split as the quickstart
fine-tunes (`recipes.quickstart.fine_tune`: SGD with Nesterov momentum 0.9, linear warm-up to lr
0.02 over the first tenth, then cosine to 0; batch 128, seed 0). Each is converted with
`apprentice_tf.tflite.convert` (int8 storage; the 4-bit one also with ``int4_weights=True``), and
over the 10,000 test images the script reports Keras top-1, TFLite top-1 (LiteRT), their top-1
agreement and the max and mean absolute logit difference (`apprentice_tf.tflite.agreement`). The
float network is the reference row. W4A4 is not a row: `convert` refuses 4-bit activations (LiteRT
has no kernels for them) and says to use ``activation_bits=8``; the script records that message.

Fine-tuned weights are kept in ``--work_dir``, so a rerun after a stop trains only what is
missing. Prints a table and writes ``--output`` (JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from absl import app, flags

import apprentice_tf as atf
from apprentice_tf.compat import keras
from recipes import quickstart

flags.DEFINE_float("epochs", 1.0, "fine-tuning epochs of each low-precision network")
flags.DEFINE_string("student", "cifar10/resnet20", "zoo name of the trained float network")
flags.DEFINE_string("train_split", "train", "CIFAR-10 split for fine-tuning")
flags.DEFINE_string("test_split", "test", "CIFAR-10 split for the agreement")
flags.DEFINE_integer("seed", 0, "seed of the fine-tuning")
flags.DEFINE_string("work_dir", "/tmp/atf_agreement", "fine-tuned weights and .tflite files")
flags.DEFINE_string("output", "benchmarks/results/agreement.json", "JSON output path")

#: (row label, weight bits, activation bits, convert options)
VARIANTS = (
    ("ternary W2A8", "ternary", 8, {}),
    ("4-bit W4A8", 4, 8, {}),
    ("4-bit W4A8, int4_weights", 4, 8, {"int4_weights": True}),
)

COLUMNS = (
    ("network", "network"),
    ("keras_top1", "top-1 Keras"),
    ("tflite_top1", "top-1 TFLite"),
    ("top1_agreement", "top-1 agreement"),
    ("max_abs_diff", "max abs logit diff"),
    ("mean_abs_diff", "mean abs logit diff"),
    ("max_abs_output", "max abs logit"),
    ("weight_dtypes", "weight dtypes"),
)


def _fine_tuned(
    float_model: keras.Model, weight_bits: Any, activation_bits: int, f: flags.FlagValues
) -> keras.Model:
    """`quantize_model(float_model)` fine-tuned as the quickstart fine-tunes (resumable)."""
    config = quickstart.QuickstartConfig(epochs=f.epochs, seeds=(f.seed,), verbose=2)
    train = atf.data.load("cifar10", f.train_split, config.batch_size, augment=True, seed=f.seed)
    keras.utils.set_random_seed(f.seed)
    model = atf.quantize_model(float_model, weight_bits, activation_bits)
    stage = f"w{weight_bits}a{activation_bits}"
    quickstart.fine_tune(stage, model, train, config, Path(f.work_dir))
    return model


def _row(name: str, model: keras.Model, path: Path, test: Any, options: dict) -> dict[str, Any]:
    atf.tflite.convert(model, path, **options)
    weights = atf.tflite.inspect(path)
    agreement = atf.tflite.agreement(model, path, test)  # with both top-1s: one pass
    keras_top1, tflite_top1 = agreement["keras_top1"], agreement["tflite_top1"]
    row = {
        "network": name,
        "file": path.name,
        **agreement,
        "weight_dtypes": ", ".join(sorted({w.dtype for w in weights})),
    }
    print(
        f"[agreement] {name}: Keras {keras_top1:.4f}  TFLite {tflite_top1:.4f}  "
        f"agree {agreement['top1_agreement']:.4f}  max|d| {agreement['max_abs_diff']:.4f}",
        flush=True,
    )
    return row


def _w4a4_refusal(float_model: keras.Model, path: Path) -> str:
    """The message `convert` gives for a W4A4 network (it must refuse: no 4-bit kernels)."""
    try:
        atf.tflite.convert(atf.quantize_model(float_model, 4, 4), path)
    except ValueError as error:
        return str(error)
    raise AssertionError("convert wrote a W4A4 file: the refusal this benchmark reports is gone")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    work_dir = Path(f.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    float_model = atf.zoo.load(f.student)
    test = atf.data.load("cifar10", f.test_split, 250)
    rows = [_row(f"float {f.student} (zoo)", float_model, work_dir / "float.tflite", test, {})]
    trained: dict[tuple[Any, int], keras.Model] = {}
    for label, weight_bits, activation_bits, options in VARIANTS:
        key = (weight_bits, activation_bits)
        if key not in trained:
            trained[key] = _fine_tuned(float_model, weight_bits, activation_bits, f)
        file = label.replace(" ", "_").replace(",", "") + ".tflite"
        rows.append(_row(label, trained[key], work_dir / file, test, options))
    refusal = _w4a4_refusal(float_model, work_dir / "w4a4.tflite")
    machine = atf.reporting.machine_info()
    print(
        f"\nMachine: {machine['cpu']}, {machine['cores']} cores, LiteRT {machine['ai_edge_litert']}"
    )
    print(atf.reporting.markdown_table(rows, COLUMNS))
    print(f"\nW4A4: {refusal}")
    atf.reporting.write_json(
        Path(f.output),
        {
            "machine": machine,
            "student": f.student,
            "fine_tuning": {
                "epochs": f.epochs,
                "train_split": f.train_split,
                "optimizer": "recipes.quickstart.fine_tune: SGD nesterov 0.9, linear warm-up "
                "over the first tenth to 0.02, then cosine to 0",
                "batch_size": quickstart.QuickstartConfig.batch_size,
                "seed": f.seed,
            },
            "test_split": f.test_split,
            "rows": rows,
            "w4a4_refusal": refusal,
        },
    )


if __name__ == "__main__":
    app.run(main)
