"""Training-step cost: float, QAT and distillation steps of a ResNet-20 student, ResNet-56 teacher.

    python -m benchmarks.step_cost [--batch_size=128 --steps=20 --warmup=5 --threads=2]

Times the median wall time of one compiled training step (Keras's own train function, called
repeatedly on a cached CIFAR-sized random batch after warm-up; no XLA `jit_compile`) for each
configuration, prints a table and the ratios against the project's goals, and writes
benchmarks/results/step_cost.json with the machine it ran on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from absl import app, flags

import apprentice_tf as atf
from apprentice_tf import reporting
from apprentice_tf.compat import keras, tf
from apprentice_tf.models import resnet

flags.DEFINE_integer("batch_size", 128, "images per step (CIFAR-sized, 32x32x3)")
flags.DEFINE_integer("steps", 20, "timed steps per configuration")
flags.DEFINE_integer("warmup", 5, "untimed steps first (tracing, allocation)")
flags.DEFINE_integer("threads", 2, "TensorFlow intra- and inter-op threads")
flags.DEFINE_string("output", "benchmarks/results/step_cost.json", "JSON output path")

#: Goal ratios: (name, numerator, denominator terms, limit).
GOALS = (
    ("QAT step / float step", "ternary QAT student", ("float student",), 1.5),
    (
        "scheme B / (QAT + teacher inference)",
        "scheme B",
        ("ternary QAT student", "teacher inference"),
        1.05,
    ),
    ("cached scheme B / QAT step", "scheme B, cached logits", ("ternary QAT student",), 1.05),
    (
        "scheme A / (QAT + teacher train step)",
        "scheme A",
        ("ternary QAT student", "teacher train step"),
        1.05,
    ),
)


def _median_ms(step: Callable[[], object], steps: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        result = step()
        if isinstance(result, dict):  # make sure the step has finished
            [float(v) for v in result.values()]
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times)), float(np.percentile(times, 90))


def _train_step(model: keras.Model, dataset: tf.data.Dataset) -> Callable[[], object]:
    iterator = iter(dataset.repeat())
    function = model.make_train_function()
    return lambda: function(iterator)


def _sgd() -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(0.01, momentum=0.9)


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    tf.config.threading.set_intra_op_parallelism_threads(f.threads)
    tf.config.threading.set_inter_op_parallelism_threads(f.threads)
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(f.batch_size, 32, 32, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, f.batch_size)
    batch = tf.data.Dataset.from_tensors((x, y)).cache()
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    teacher = resnet.resnet56(num_classes=10)
    teacher_logits = teacher(x, training=False).numpy()
    cached = tf.data.Dataset.from_tensors((x, y, teacher_logits)).cache()

    def plain(model: keras.Model) -> Callable[[], object]:
        model.compile(_sgd(), ce)
        return _train_step(model, batch)

    def distiller(cached_logits: bool = False, train_teacher: bool = False):
        student = atf.quantize_model(resnet.resnet20(num_classes=10), "ternary", 8)
        net = resnet.resnet56(num_classes=10) if train_teacher else teacher
        d = atf.Distiller(student, None if cached_logits else net, train_teacher=train_teacher)
        d.compile(_sgd())
        return _train_step(d, cached if cached_logits else batch)

    infer = tf.function(lambda images: teacher(images, training=False))
    configs: dict[str, Callable[[], Callable[[], object]]] = {
        "float student": lambda: plain(resnet.resnet20(num_classes=10)),
        "ternary QAT student": lambda: plain(
            atf.quantize_model(resnet.resnet20(num_classes=10), "ternary", 8)
        ),
        "4-bit QAT student": lambda: plain(
            atf.quantize_model(resnet.resnet20(num_classes=10), 4, 8)
        ),
        "scheme B": lambda: distiller(),
        "scheme B, cached logits": lambda: distiller(cached_logits=True),
        "scheme A": lambda: distiller(train_teacher=True),
        "teacher inference": lambda: lambda: infer(x).numpy(),
        "teacher train step": lambda: plain(resnet.resnet56(num_classes=10)),
    }
    rows = []
    for name, build in configs.items():
        median, p90 = _median_ms(build(), f.steps, f.warmup)
        rows.append({"configuration": name, "median_ms": median, "p90_ms": p90})
        print(f"{name:28s} median {median:8.1f} ms   p90 {p90:8.1f} ms", flush=True)
    times = {row["configuration"]: row["median_ms"] for row in rows}
    goals = []
    for label, numerator, denominator, limit in GOALS:
        ratio = times[numerator] / sum(times[name] for name in denominator)
        goals.append({"goal": label, "ratio": ratio, "limit": limit, "met": ratio <= limit})
    machine = reporting.machine_info(f.threads)
    print()
    print(
        f"Machine: {machine['cpu']}, {machine['cores']} cores, TF {machine['tensorflow']}, "
        f"{f.threads} threads, batch {f.batch_size}, no jit_compile, {machine['date']}"
    )
    print(
        reporting.markdown_table(
            rows,
            [
                ("configuration", "configuration"),
                ("median_ms", "median ms/step"),
                ("p90_ms", "p90 ms"),
            ],
        )
    )
    print()
    print(
        reporting.markdown_table(
            goals, [("goal", "goal"), ("ratio", "measured"), ("limit", "limit"), ("met", "met")]
        )
    )
    reporting.write_json(
        Path(f.output),
        {
            "machine": machine,
            "batch_size": f.batch_size,
            "steps": f.steps,
            "warmup": f.warmup,
            "jit_compile": False,
            "rows": rows,
            "goals": goals,
        },
    )


if __name__ == "__main__":
    app.run(main)
