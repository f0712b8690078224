"""Deployed size and LiteRT latency of ResNet-20 and MobileNet in float, int8, ternary and 4-bit.

    python -m benchmarks.deploy [--train_split=train[:10%] --epochs=2 --runs=50]

For each network the float model is trained briefly on a CIFAR-10 slice (so that Keras/TFLite
agreement is measured on a network that makes real decisions), then exported five ways:
float32; full-integer int8 (post-training, calibrated on 100 training batches); ternary and
4-bit weights (quantization-aware, fine-tuned for the same epochs from the float weights),
with the converter's default storage; 4-bit with ``int4_weights=True``. For each file:
raw, gzip, ideal packed and float32-equivalent bytes and their ratio to the float file, LiteRT
latency for one image (median of `runs` invocations after warm-up, 1 and 2 threads), and top-1
agreement between Keras and TFLite on the CIFAR-10 test split. Writes
benchmarks/results/deploy.json.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

import apprentice_tf as atf
from apprentice_tf import reporting, tflite
from apprentice_tf.compat import keras, tf
from apprentice_tf.models import mobilenet, resnet

flags.DEFINE_string("train_split", "train[:10%]", "CIFAR-10 slice for the short training")
flags.DEFINE_string("test_split", "test", "CIFAR-10 split for the agreement")
flags.DEFINE_integer("epochs", 2, "epochs of float training and of QAT fine-tuning")
flags.DEFINE_integer("runs", 50, "timed LiteRT invocations per file and thread count")
flags.DEFINE_integer("threads", 2, "TensorFlow threads for training")
flags.DEFINE_string("output", "benchmarks/results/deploy.json", "JSON output path")

NETWORKS = {
    "ResNet-20": lambda: resnet.resnet20(num_classes=10),
    "MobileNet v1 (0.5)": lambda: mobilenet.mobilenet_v1(num_classes=10, width_multiplier=0.5),
}


def _latency_ms(path: Path, threads: int, runs: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    image = np.zeros(detail["shape"], dtype=detail["dtype"])
    for _ in range(5):
        interpreter.set_tensor(detail["index"], image)
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.set_tensor(detail["index"], image)
        interpreter.invoke()
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def _agreement(model: keras.Model, path: Path, test: tf.data.Dataset) -> float:
    same = total = 0
    for x, _ in test:
        keras_top = np.argmax(model.predict_on_batch(x), -1)
        tflite_top = np.argmax(tflite.predict(path, x.numpy()), -1)
        same += int(np.sum(keras_top == tflite_top))
        total += len(keras_top)
    return same / total


def _fit(model: keras.Model, train: tf.data.Dataset, epochs: int) -> keras.Model:
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train, epochs=epochs, verbose=2)
    return model


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    tf.config.threading.set_intra_op_parallelism_threads(f.threads)
    tf.config.threading.set_inter_op_parallelism_threads(f.threads)
    keras.utils.set_random_seed(0)
    train = atf.data.load("cifar10", f.train_split, batch_size=128, augment=True)
    test = atf.data.load("cifar10", f.test_split, batch_size=256)
    calibration = atf.data.load("cifar10", f.train_split, batch_size=1, deterministic=True)
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="atf_deploy_"))
    for network, build in NETWORKS.items():
        float_model = _fit(build(), train, f.epochs)
        variants = {
            "float32": (float_model, {}),
            "int8 (full integer)": (float_model, {"representative_data": calibration.take(100)}),
        }
        for label, bits in (("ternary", "ternary"), ("4-bit", 4)):
            qat = _fit(atf.quantize_model(float_model, bits, 8), train, f.epochs)
            variants[f"{label} W/A8"] = (qat, {})
            if bits == 4:
                variants["4-bit W/A8, int4_weights"] = (qat, {"int4_weights": True})
        float_bytes = None
        for variant, (model, options) in variants.items():
            path = workdir / f"{network}_{variant}.tflite".replace(" ", "_").replace("/", "-")
            tflite.convert(model, path, **options)
            weights = tflite.inspect(path)
            sizes = tflite.size_report(path, weights)
            float_bytes = float_bytes or sizes.file_bytes
            row = {
                "network": network,
                "variant": variant,
                **dataclasses.asdict(sizes),
                "file_vs_float": sizes.file_bytes / float_bytes,
                "gzip_vs_float": sizes.gzip_bytes / float_bytes,
                "packed_vs_float": sizes.packed_bytes / float_bytes,
                "weight_dtypes": sorted({w.dtype for w in weights}),
                "max_levels_low_precision": max(
                    (w.levels for w in weights if "quant_" in w.name), default=None
                ),
                "latency_ms_1_thread": _latency_ms(path, 1, f.runs),
                "latency_ms_2_threads": _latency_ms(path, 2, f.runs),
                "top1_agreement": _agreement(model, path, test),
            }
            rows.append(row)
            print(
                f"{network:20s} {variant:26s} file {sizes.file_bytes:>9,d} B  gzip "
                f"{sizes.gzip_bytes:>9,d}  packed {sizes.packed_bytes:>9,d}  "
                f"1T {row['latency_ms_1_thread']:.2f} ms  2T {row['latency_ms_2_threads']:.2f} ms  "
                f"agree {row['top1_agreement']:.4f}",
                flush=True,
            )
    machine = reporting.machine_info()
    columns = [
        ("network", "network"),
        ("variant", "export"),
        ("file_bytes", "file B"),
        ("gzip_bytes", "gzip B"),
        ("packed_bytes", "packed B (ideal)"),
        ("float32_bytes", "float32-equiv B"),
        ("file_vs_float", "file/float"),
        ("packed_vs_float", "packed/float"),
        ("latency_ms_1_thread", "ms (1 thread)"),
        ("latency_ms_2_threads", "ms (2 threads)"),
        ("top1_agreement", "Keras/TFLite top-1 agreement"),
    ]
    print()
    print(
        f"Machine: {machine['cpu']}, {machine['cores']} cores, TF {machine['tensorflow']}, "
        f"LiteRT {machine['ai_edge_litert']}, {machine['date']}; latency: batch 1, median of "
        f"{f.runs} runs"
    )
    print(reporting.markdown_table(rows, columns))
    reporting.write_json(
        Path(f.output),
        {
            "machine": machine,
            "train_split": f.train_split,
            "test_split": f.test_split,
            "epochs": f.epochs,
            "runs": f.runs,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    app.run(main)
