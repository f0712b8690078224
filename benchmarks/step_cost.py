"""Training-step cost: float, QAT and distillation steps of a ResNet-20 student, ResNet-56 teacher.

    python -m benchmarks.step_cost [--batch_size=128 --steps=20 --warmup=5 --threads=2]

Times the median wall time of one compiled training step (Keras's own train function, called
repeatedly on a cached CIFAR-sized random batch after warm-up; no XLA `jit_compile`) for each
configuration, prints a table and the ratios against the project's goals, and writes
benchmarks/results/step_cost.json with the machine it ran on.

bfloat16: the float student, the teacher's train step, its inference, and schemes B and A with
their teacher (frozen, or trained jointly) are also built under Keras's ``mixed_bfloat16`` policy
(`apprentice_tf.precision`; the ternary student stays float32) and timed against their float32
twins side by side, alternating blocks of ``--steps`` steps over ``--rounds`` rounds, so that
machine drift reaches both alike; the JSON records each round's ratio bf16/float32 and whether the
CPU has bfloat16 instructions (`apprentice_tf.precision.native_bfloat16`). The recipes run float
networks and teachers under ``mixed_bfloat16`` where the CPU has it (``--precision=auto``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from absl import app, flags

import apprentice_tf as atf
from apprentice_tf import precision, reporting
from apprentice_tf.compat import keras, tf
from apprentice_tf.models import resnet

flags.DEFINE_integer("batch_size", 128, "images per step (CIFAR-sized, 32x32x3)")
flags.DEFINE_integer("steps", 20, "timed steps per configuration")
flags.DEFINE_integer("warmup", 5, "untimed steps first (tracing, allocation)")
flags.DEFINE_integer("threads", 2, "TensorFlow intra- and inter-op threads")
flags.DEFINE_integer("rounds", 3, "alternating rounds of the bfloat16 / float32 pairs")
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


def _paired_ms(
    steps: dict[str, Callable[[], object]], rounds: int, timed: int, warmup: int
) -> dict[str, list[float]]:
    """Median ms per step of each named step, one block each per round, in alternating order."""
    medians: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            medians[name].append(_median_ms(steps[name], timed, warmup)[0])
    return medians


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

    def distiller(
        cached_logits: bool = False, train_teacher: bool = False, policy: str = "float32"
    ):
        """A ternary ResNet-20 student's Distiller; its teacher computes under `policy`."""
        student = atf.quantize_model(resnet.resnet20(num_classes=10), "ternary", 8)
        if train_teacher:
            net = precision.build_under(policy, lambda: resnet.resnet56(num_classes=10))
        else:
            net = precision.policy_twin(teacher, policy, lambda: resnet.resnet56(num_classes=10))
        d = atf.Distiller(
            student=student, teacher=None if cached_logits else net, train_teacher=train_teacher
        )
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

    def inference(policy: str) -> Callable[[], object]:
        net = precision.policy_twin(teacher, policy, lambda: resnet.resnet56(num_classes=10))
        function = tf.function(lambda images: net(images, training=False))
        return lambda: function(x).numpy()

    # Each pair: the configuration with its float network (the teacher in B and A) built under
    # float32 and under mixed_bfloat16; the quantized student is float32 in both.
    paired: dict[str, Callable[[str], Callable[[], object]]] = {
        "float student": lambda policy: plain(
            precision.build_under(policy, lambda: resnet.resnet20(num_classes=10))
        ),
        "teacher train step": lambda policy: plain(
            precision.build_under(policy, lambda: resnet.resnet56(num_classes=10))
        ),
        "teacher inference": inference,
        "scheme B": lambda policy: distiller(policy=policy),
        "scheme A": lambda policy: distiller(train_teacher=True, policy=policy),
    }
    pairs = []
    for name, build in paired.items():
        medians = _paired_ms(
            {policy: build(policy) for policy in ("float32", "mixed_bfloat16")},
            f.rounds,
            f.steps,
            f.warmup,
        )
        ratios = [b / a for a, b in zip(medians["float32"], medians["mixed_bfloat16"], strict=True)]
        pairs.append(
            {
                "configuration": name,
                "float32_ms": medians["float32"],
                "mixed_bfloat16_ms": medians["mixed_bfloat16"],
                "ratio_bf16_to_fp32": float(np.median(ratios)),
                "ratio_per_round": ratios,
            }
        )
        rows.append(
            {
                "configuration": f"{name}, mixed_bfloat16",
                "median_ms": float(np.median(medians["mixed_bfloat16"])),
                "p90_ms": float(np.max(medians["mixed_bfloat16"])),
            }
        )
        print(
            f"{name:28s} bf16/fp32 {np.median(ratios):.2f} "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})",
            flush=True,
        )
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
            pairs,
            [
                ("configuration", "network"),
                ("ratio_bf16_to_fp32", "bf16 / fp32 step time (median of rounds)"),
            ],
        )
    )
    print(f"CPU has bfloat16 instructions: {precision.native_bfloat16()}")
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
            "native_bfloat16": precision.native_bfloat16(),
            "bfloat16_pairs": pairs,
        },
    )


if __name__ == "__main__":
    app.run(main)
