"""Latency on the target, and student selection from it: HAKD (Turner et al., arXiv 1810.10460).

Turner, Crowley, Gray, Storkey and O'Boyle, "HAKD: Hardware Aware Knowledge Distillation" (2018)
observe that inference time on a real platform is not proportional to parameters or FLOPs: it
moves in *steps* with channel counts (vector widths, tiling, padding inside the runtime). So the
student is designed from measurements, not from a cost model:

1. **Measure** (`profile`, `layer_sweep`). Each candidate (one block, `BlockSpec`, or a whole
   network) is converted to TFLite and timed with the LiteRT interpreter on this machine, with a
   fixed thread count, `warmup` untimed runs and `runs` timed runs; a row keeps the median, the
   10th/90th percentiles and the spread p90 - p10 of the per-invoke times. Rows live in a
   `LatencyTable` keyed by (device id, threads, op/shape key, quantization, batch size), saved as
   JSON, so a new budget needs no new timing and a second `profile` call reuses what is stored.
2. **Find the steps** (`find_steps`, `plot_sweep`): channel counts at which the latency of a block
   jumps, t(c_i) / t(c_{i-1}) - 1 > threshold.
3. **Select** (`student_candidates`, `select_student`): among whole student networks of a family
   (MobileNet v1 widths, DenseNet-BC growth rates, CIFAR ResNet widths) whose measured latency
   fits the budget, the one with the most capacity (parameters), preferring the faster of
   candidates of nearly equal capacity, i.e. the one just below a step.

A typical recipe::

    candidates = hardware.student_candidates("mobilenet", num_classes=10, input_shape=(32, 32, 3))
    table = hardware.profile(candidates, num_threads=1, quantize="ternary", cache="latency.json")
    choice = hardware.select_student(table, latency_budget_ms=5.0, family="mobilenet")
    student = choice.build()

`estimate_network_latency` sums per-block latencies over a network's convolutions
(`network_blocks`); `measure_model_latency` times the whole network; their difference is the
error of the additive latency model.

The package, one module per concept: `device` (the fingerprint), `blocks` (`BlockSpec`,
`network_blocks`), `candidates` (`StudentCandidate`, `student_candidates`), `table`
(`LatencyRow`, `LatencyTable`), `profiling` (`ProfileSettings`, `profile`, `layer_sweep`,
`estimate_network_latency`, `measure_model_latency`, `time_tflite`), `steps` (`find_steps`,
`plot_sweep`) and `selection` (`select_student`); every public name is re-exported here.

Timing is only as good as the machine is quiet: other processes on the same cores show up as a
large spread (p90 - p10), which every row records.
"""

from apprentice_tf.hardware._common import QUANTIZE_MODES
from apprentice_tf.hardware.blocks import OPS, BlockSpec, network_blocks
from apprentice_tf.hardware.candidates import FAMILIES, StudentCandidate, student_candidates
from apprentice_tf.hardware.device import device_fingerprint
from apprentice_tf.hardware.profiling import (
    ProfileSettings,
    estimate_network_latency,
    layer_sweep,
    measure_model_latency,
    profile,
    time_tflite,
)
from apprentice_tf.hardware.selection import Selection, select_student
from apprentice_tf.hardware.steps import Step, find_steps, plot_sweep
from apprentice_tf.hardware.table import LatencyRow, LatencyTable

__all__ = [
    "OPS",
    "QUANTIZE_MODES",
    "FAMILIES",
    "BlockSpec",
    "StudentCandidate",
    "LatencyRow",
    "LatencyTable",
    "ProfileSettings",
    "Step",
    "Selection",
    "device_fingerprint",
    "profile",
    "layer_sweep",
    "plot_sweep",
    "find_steps",
    "network_blocks",
    "estimate_network_latency",
    "measure_model_latency",
    "time_tflite",
    "student_candidates",
    "select_student",
]
