"""The CIFAR-10 accuracy table: every row trained on the same budget and seed on this machine.

    python -m benchmarks.accuracy [--train_split=train[:10%] --epochs=3 --teacher=resnet56]

Rows (ResNet-20 students): float; ternary W2A8 alone; ternary + Apprentice schemes A, B, C;
4-bit W4A8 alone and + scheme B; ternary with progressive branches. Each group of rows is one
recipe run (`recipes.apprentice`, `recipes.progressive`) in ``<work_dir>/<group>``, resumable
stage by stage; when a group finishes, its rows are added to the JSON output at once, and a
rerun skips groups already there, so the table can be built over several sittings. Prints
the table and, per scheme, how much of the float-to-ternary gap distillation recovered:
(ternary+KD − ternary) / (float − ternary). Writes benchmarks/results/accuracy.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absl import app, flags

from apprentice_tf import data, reporting
from apprentice_tf.compat import keras
from apprentice_tf.models import resnet
from recipes import apprentice, progressive
from recipes._common import deploy, train_stage

flags.DEFINE_string("train_split", "train[:10%]", "CIFAR-10 training slice of every row")
flags.DEFINE_string("test_split", "test[:20%]", "CIFAR-10 evaluation slice of every row")
flags.DEFINE_integer("epochs", 3, "epochs of every training stage (teacher, student, baseline)")
flags.DEFINE_string("teacher", "resnet56", "teacher network (float), trained once, shared")
flags.DEFINE_integer("batch_size", 128, "batch size")
flags.DEFINE_integer("threads", 2, "TensorFlow threads")
flags.DEFINE_string("work_dir", "runs/accuracy", "where the recipe runs keep their stages")
flags.DEFINE_string("output", "benchmarks/results/accuracy.json", "JSON output path")


def _apprentice(scheme: str, bits: str, teacher_checkpoint: str, work: Path) -> dict[str, Any]:
    f = flags.FLAGS
    return apprentice.run(
        apprentice.ApprenticeConfig(
            scheme=scheme,
            train_split=f.train_split,
            test_split=f.test_split,
            teacher=f.teacher,
            student="resnet20",
            weight_bits=bits,
            activation_bits=8,
            epochs=f.epochs,
            teacher_epochs=f.epochs,
            student_pretrain_epochs=f.epochs,
            finetune_epochs=f.epochs,
            batch_size=f.batch_size,
            teacher_checkpoint=teacher_checkpoint,
            output_dir=str(work),
            threads=f.threads,
            verbose=2,
        )
    )


def _progressive(work: Path) -> dict[str, Any]:
    f = flags.FLAGS
    return progressive.run(
        progressive.ProgressiveConfig(
            train_split=f.train_split,
            test_split=f.test_split,
            model="resnet20",
            weight_bits="ternary",
            activation_bits=8,
            epochs=f.epochs,
            batch_size=f.batch_size,
            output_dir=str(work),
            threads=f.threads,
            verbose=2,
        )
    )


def _float_student(work: Path) -> dict[str, Any]:
    """A float ResNet-20 trained like the students (the recipes' SGD + cosine schedule)."""
    f = flags.FLAGS
    keras.utils.set_random_seed(0)
    train = data.load("cifar10", f.train_split, f.batch_size, augment=True, seed=0)
    test = data.load("cifar10", f.test_split, 256)
    model = resnet.resnet20(num_classes=10)
    steps = int(train.cardinality())
    model.compile(
        apprentice._optimizer(0.1, f.epochs, steps),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train_stage("float", model, train, f.epochs, work, validation_data=test, verbose=2)
    row = {"model": "resnet20", "bits": "float32", "scheme": "float"}
    return {"rows": [deploy(model, work / "float.tflite", test, row, verbose=0)]}


def _rows(results: dict[str, Any], keep: dict[str, str]) -> list[dict[str, Any]]:
    """The result rows whose scheme is a key of `keep`, renamed to the table's row names."""
    columns = ("model", "bits", "keras_top1", "tflite_top1", "packed_bytes", "file_bytes")
    return [
        {
            "row": keep[row["scheme"]],
            **{k: row.get(k) for k in columns},
            "ms_per_image": row.get("tflite_ms_per_example"),
        }
        for row in results["rows"]
        if row["scheme"] in keep
    ]


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    work = Path(f.work_dir)
    output = Path(f.output)
    table: dict[str, Any] = json.loads(output.read_text()) if output.exists() else {}
    budget = {
        k: getattr(f, k) for k in ("train_split", "test_split", "epochs", "teacher", "batch_size")
    }
    if table.get("budget", budget) != budget:
        raise SystemExit(
            f"error: {output} was built with budget {table['budget']}; pass the same "
            "flags, or another --output."
        )
    table.setdefault("budget", budget)
    groups = table.setdefault("groups", {})
    teacher = str(work / "B_ternary" / "teacher.keras")
    plan: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = [
        ("float", lambda: _rows(_float_student(work / "float"), {"float": "float ResNet-20"})),
        (
            "B_ternary",
            lambda: _rows(
                _apprentice("B", "ternary", "", work / "B_ternary"),
                {
                    "teacher": f"teacher ({f.teacher}, float)",
                    "alone": "ternary W2A8 alone",
                    "B": "ternary W2A8 + KD scheme B",
                },
            ),
        ),
        (
            "C_ternary",
            lambda: _rows(
                _apprentice("C", "ternary", teacher, work / "C_ternary"),
                {"float": "float ResNet-20", "C": "ternary W2A8 + KD scheme C"},
            ),
        ),
        (
            "A_ternary",
            lambda: _rows(
                _apprentice("A", "ternary", "", work / "A_ternary"),
                {"A": "ternary W2A8 + KD scheme A"},
            ),
        ),
        (
            "B_4bit",
            lambda: _rows(
                _apprentice("B", "4", teacher, work / "B_4bit"),
                {"alone": "4-bit W4A8 alone", "B": "4-bit W4A8 + KD scheme B"},
            ),
        ),
        (
            "progressive",
            lambda: _rows(
                _progressive(work / "progressive"), {"progressive": "ternary W2A8 progressive"}
            ),
        ),
    ]
    for name, build in plan:
        if name in groups:
            print(f"[{name}] already in {output}: skipped")
            continue
        groups[name] = build()
        table["machine"] = reporting.machine_info(f.threads)
        reporting.write_json(output, table)
        print(f"[{name}] done: {[row['row'] for row in groups[name]]}", flush=True)

    rows = [row for group in groups.values() for row in group]
    top1 = {row["row"]: row["tflite_top1"] for row in rows}
    gains = []
    float_top1 = top1.get("float ResNet-20")
    ternary_top1 = top1.get("ternary W2A8 alone")
    for scheme in ("A", "B", "C"):
        distilled = top1.get(f"ternary W2A8 + KD scheme {scheme}")
        if None in (distilled, float_top1, ternary_top1) or float_top1 <= ternary_top1:
            continue  # no float-to-ternary gap at this budget: nothing to recover
        recovered = (distilled - ternary_top1) / (float_top1 - ternary_top1)
        gains.append({"scheme": scheme, "recovered": recovered, "goal_met": recovered >= 0.5})
    table["gap_recovered"] = gains
    if not gains:
        print(
            "No float-to-ternary gap at this budget (the ternary student is not below the "
            "float one), so 'gap recovered' is undefined."
        )
    reporting.write_json(output, table)
    machine = table["machine"]
    print(
        f"\nMachine: {machine['cpu']}, {machine['cores']} cores, TF {machine['tensorflow']}, "
        f"{machine['date']}. Budget: {budget}"
    )
    print(
        reporting.markdown_table(
            rows,
            [
                ("row", "row"),
                ("bits", "bits"),
                ("keras_top1", "Keras top-1"),
                ("tflite_top1", "TFLite top-1"),
                ("packed_bytes", "packed B"),
                ("ms_per_image", "TFLite ms/image"),
            ],
        )
    )
    print()
    print(
        reporting.markdown_table(
            gains, [("scheme", "scheme"), ("recovered", "gap recovered"), ("goal_met", "≥ 0.5")]
        )
    )


if __name__ == "__main__":
    app.run(main)
