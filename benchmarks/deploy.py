"""Deployed size, LiteRT latency, delegation and Keras/TFLite agreement of low-precision exports.

    python -m benchmarks.deploy [--train_split=train[:10%] --epochs=1]          # both stages
    nice -n 10 python -m benchmarks.deploy --stage=export                     # train, export
    python -m benchmarks.deploy --stage=measure                               # time (not niced)

Networks: ResNet-20 and MobileNet v1 (0.5) on CIFAR-10, and a Dense-heavy MLP (3072-256 float,
then 256-1024-1024-256 ternary, then 10). Each float network is trained briefly on a CIFAR-10
slice (so that agreement is measured on a network that makes real decisions), then exported:
float32; full-integer int8 (post-training, 100 calibration images); ternary and 4-bit weights
with 8-bit activations (quantization-aware, fine-tuned for the same epochs from the float
weights) with int8 storage; 4-bit with ``int4_weights=True``; for the MLP, ternary with
``int2_dense=True``. The export stage writes the files, their sizes and the Keras/TFLite
agreement over the whole test split (top-1 agreement, max and mean |logit difference|) to
``<files_dir>/exports.json``.

The measure stage uses only `apprentice_tf.tflite.latency`: for each network, all its files at
1 and 2 threads are timed alternately in one process (`repeats` rounds of `runs` invokes after
`warmup`), so machine drift reaches every file alike; each row reports the median of the round
medians, their min-max, and the round-by-round ratio to the float32 file. It also records which
operators LiteRT delegates to XNNPACK (`apprentice_tf.tflite.delegation`). Writes
benchmarks/results/deploy.json.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

from absl import app, flags

import apprentice_tf as atf
from apprentice_tf.compat import keras, tf
from apprentice_tf.models import mobilenet, resnet

flags.DEFINE_enum("stage", "all", ["all", "export", "measure"], "which stage(s) to run")
flags.DEFINE_string("train_split", "train[:10%]", "CIFAR-10 slice for the short training")
flags.DEFINE_string("test_split", "test", "CIFAR-10 split for the agreement")
flags.DEFINE_integer("epochs", 1, "epochs of float training and of QAT fine-tuning")
flags.DEFINE_integer("repeats", 7, "latency rounds over all files of a network")
flags.DEFINE_integer("runs", 100, "timed LiteRT invocations per file, thread count and round")
flags.DEFINE_integer("warmup", 20, "untimed invocations before each round's timed ones")
flags.DEFINE_integer("threads", 2, "TensorFlow threads for training")
flags.DEFINE_string("files_dir", "/tmp/atf_deploy", "where the .tflite files and exports.json go")
flags.DEFINE_string("output", "benchmarks/results/deploy.json", "JSON output path")
flags.DEFINE_string(
    "load_note",
    "",
    "what else ran on the machine during the measure stage (recorded in the JSON)",
)


def _mlp() -> keras.Model:
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = layers.Flatten(name="flatten")(inputs)
    x = layers.Dense(256, name="fc_in")(x)
    x = layers.ReLU(name="fc_in_relu")(x)
    for i, width in enumerate((1024, 1024, 256)):
        x = layers.Dense(width, name=f"fc{i}")(x)
        x = layers.ReLU(name=f"fc{i}_relu")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="mlp")


NETWORKS = {
    "ResNet-20": lambda: resnet.resnet20(num_classes=10),
    "MobileNet v1 (0.5)": lambda: mobilenet.mobilenet_v1(num_classes=10, width_multiplier=0.5),
    "MLP 3072-256-1024-1024-256-10": _mlp,
}
FLOAT = "float32"


def _fit(model: keras.Model, train: tf.data.Dataset, epochs: int) -> keras.Model:
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train, epochs=epochs, verbose=2)
    return model


def _variants(network: str, float_model: keras.Model, train, calibration, epochs: int) -> dict:
    variants = {FLOAT: (float_model, {})}
    if network.startswith("MLP"):
        qat = _fit(atf.quantize_model(float_model, "ternary", 8), train, epochs)
        variants["ternary W/A8"] = (qat, {})
        variants["ternary W/A8, int2_dense"] = (qat, {"int2_dense": True})
        return variants
    variants["int8 (full integer)"] = (float_model, {"representative_data": calibration.take(100)})
    for label, bits in (("ternary", "ternary"), ("4-bit", 4)):
        qat = _fit(atf.quantize_model(float_model, bits, 8), train, epochs)
        variants[f"{label} W/A8"] = (qat, {})
        if bits == 4:
            variants["4-bit W/A8, int4_weights"] = (qat, {"int4_weights": True})
    return variants


def _max_low_precision_levels(model: keras.Model, weights: list) -> int | None:
    """Most levels per channel stored for a layer `quantize_model` made low-precision."""
    layers = atf.tflite.low_precision_levels(model)
    levels = [
        w.levels for w in weights if any(f"/{name}/" in w.name.split(";")[0] for name in layers)
    ]
    return max(levels, default=None)


def export(f: flags.FlagValues, files_dir: Path) -> list[dict]:
    tf.config.threading.set_intra_op_parallelism_threads(f.threads)
    tf.config.threading.set_inter_op_parallelism_threads(f.threads)
    keras.utils.set_random_seed(0)
    train = atf.data.load("cifar10", f.train_split, batch_size=128, augment=True)
    test = atf.data.load("cifar10", f.test_split, batch_size=250)
    calibration = atf.data.load("cifar10", f.train_split, batch_size=1, deterministic=True)
    rows = []
    for network, build in NETWORKS.items():
        float_model = _fit(build(), train, f.epochs)
        for variant, (model, options) in _variants(
            network, float_model, train, calibration, f.epochs
        ).items():
            name = f"{network}_{variant}".replace(" ", "_").replace("/", "-").replace(",", "")
            path = files_dir / f"{name}.tflite"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                atf.tflite.convert(model, path, **options)
            weights = atf.tflite.inspect(path)
            sizes = atf.tflite.size_report(path, weights)
            agreement = atf.tflite.agreement(model, path, test)
            row = {
                "network": network,
                "variant": variant,
                "file": str(path),
                **dataclasses.asdict(sizes),
                "weight_dtypes": sorted({w.dtype for w in weights}),
                "max_levels_low_precision": _max_low_precision_levels(model, weights),
                "convert_warnings": [str(w.message) for w in caught if "convert" in str(w.message)],
                **{f"agreement_{key}": value for key, value in agreement.items()},
            }
            rows.append(row)
            print(
                f"{network:30s} {variant:26s} file {sizes.file_bytes:>10,d} B  "
                f"agree {agreement['top1_agreement']:.4f}  "
                f"max|d| {agreement['max_abs_diff']:.4f}  mean|d| {agreement['mean_abs_diff']:.5f}",
                flush=True,
            )
    atf.reporting.write_json(files_dir / "exports.json", {"flags": _export_flags(f), "rows": rows})
    return rows


def _export_flags(f: flags.FlagValues) -> dict:
    return {"train_split": f.train_split, "test_split": f.test_split, "epochs": f.epochs}


def measure(f: flags.FlagValues, files_dir: Path) -> None:
    exported = json.loads((files_dir / "exports.json").read_text())
    rows = exported["rows"]
    for network in dict.fromkeys(row["network"] for row in rows):
        group = [row for row in rows if row["network"] == network]
        paths = [row["file"] for row in group]
        timings = atf.tflite.latency(paths, (1, 2), repeats=f.repeats, runs=f.runs, warmup=f.warmup)
        by_pair = {(t.path, t.num_threads): t for t in timings}
        reference = next(row["file"] for row in group if row["variant"] == FLOAT)
        for row in group:
            float_bytes = next(r["file_bytes"] for r in group if r["variant"] == FLOAT)
            row["file_vs_float"] = row["file_bytes"] / float_bytes
            row["gzip_vs_float"] = row["gzip_bytes"] / float_bytes
            row["packed_vs_float"] = row["packed_bytes"] / float_bytes
            for threads in (1, 2):
                timing = by_pair[row["file"], threads]
                suffix = "1_thread" if threads == 1 else "2_threads"
                ratio = atf.tflite.latency_ratio(timing, by_pair[reference, threads])
                row[f"latency_ms_{suffix}"] = timing.median_ms
                row[f"latency_ms_{suffix}_round_min"] = timing.spread_ms[0]
                row[f"latency_ms_{suffix}_round_max"] = timing.spread_ms[1]
                row[f"latency_ms_{suffix}_p10"] = timing.p10_ms
                row[f"latency_ms_{suffix}_p90"] = timing.p90_ms
                row[f"vs_float_{suffix}"] = ratio["median"]
                row[f"vs_float_{suffix}_round_min"] = ratio["min"]
                row[f"vs_float_{suffix}_round_max"] = ratio["max"]
            placements = atf.tflite.delegation(row["file"])
            row["delegation"] = atf.litert.delegation_summary(placements)
            row["not_delegated"] = [dataclasses.asdict(p) for p in placements if not p.delegated]
            print(
                f"{network:30s} {row['variant']:26s} "
                f"1T {row['latency_ms_1_thread']:.3f} ms (x{row['vs_float_1_thread']:.2f})  "
                f"2T {row['latency_ms_2_threads']:.3f} ms (x{row['vs_float_2_threads']:.2f})  "
                f"{row['delegation']}",
                flush=True,
            )
    machine = atf.reporting.machine_info()
    method = (
        f"LiteRT Interpreter, default XNNPACK delegate, batch 1, seeded random input; per "
        f"network all files and both thread counts alternated in one process: {f.repeats} "
        f"rounds x {f.runs} timed invokes after {f.warmup} warm-ups; latency = median of the "
        "round medians (min-max of round medians given); ratio = median of round-by-round "
        "ratios to the float32 file"
    )
    columns = [
        ("network", "network"),
        ("variant", "export"),
        ("file_bytes", "file B"),
        ("gzip_bytes", "gzip B"),
        ("packed_bytes", "packed B (ideal)"),
        ("latency_ms_1_thread", "ms 1T"),
        ("vs_float_1_thread", "x float 1T"),
        ("latency_ms_2_threads", "ms 2T"),
        ("vs_float_2_threads", "x float 2T"),
        ("agreement_top1_agreement", "top-1 agreement"),
        ("agreement_max_abs_diff", "max abs logit diff"),
        ("agreement_mean_abs_diff", "mean abs logit diff"),
        ("delegation", "runtime"),
    ]
    print()
    print(
        f"Machine: {machine['cpu']} (family/model {machine['cpu_family_model']}, "
        f"{machine['cpu_flags']}), {machine['cores']} cores, LiteRT {machine['ai_edge_litert']}, "
        f"{machine['date']}; {method}"
    )
    print(atf.reporting.markdown_table(rows, columns))
    atf.reporting.write_json(
        Path(f.output),
        {
            "machine": machine,
            "load_note": f.load_note,
            "method": method,
            **exported["flags"],
            "repeats": f.repeats,
            "runs": f.runs,
            "warmup": f.warmup,
            "rows": rows,
        },
    )


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    files_dir = Path(f.files_dir)
    if f.stage in ("all", "export"):
        export(f, files_dir)
    if f.stage in ("all", "measure"):
        measure(f, files_dir)


if __name__ == "__main__":
    app.run(main)
