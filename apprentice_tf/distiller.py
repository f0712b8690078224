"""`Distiller`: train a low-precision student from a full-precision teacher (Apprentice).

Mishra & Marr, "Apprentice: Using Knowledge Distillation Techniques To Improve Low-Precision
Network Accuracy", ICLR 2018 (arXiv:1711.05852). One Keras model holds the student and the
teacher and minimises

    L = α·H(y, p_T) + β·H(y, p_A) + γ·τ²·H(p_T(τ), p_A(τ))

(`apprentice_tf.losses.apprentice_loss`). The three schemes of the paper:

- **A** (``train_teacher=True``): teacher and student train together from scratch; each step
  runs the teacher in training mode, updates it with α·H(y, p_T) through its own optimizer and
  the student with β·H(y, p_A) + γ·τ²·H(p_T(τ), p_A(τ)), the teacher's logits a fixed target.
- **B** (``train_teacher=False``, the default): a pre-trained teacher, frozen (BatchNorm in
  inference mode, ``teacher.trainable = False``); only the student learns. Its logits can be
  computed once with `apprentice_tf.caching.cache_teacher_logits`.
- **C** (`Distiller.from_pretrained_student`): a float student trained first, its precision
  lowered with `apprentice_tf.quantize.quantize_model`, then fine-tuned as in B.

Usage::

    d = Distiller(
        student=student, teacher=teacher, alpha=1.0, beta=0.5, gamma=0.5, temperature=1.0
    )
    d.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"])
    d.fit(train_ds, validation_data=val_ds, epochs=..., callbacks=[...])
    deployable = d.student                 # the network to save and convert

Running on a cluster
--------------------
Build and compile the Distiller inside ``strategy.scope()`` (`tf.distribute.MirroredStrategy`
for several devices, `tf.distribute.MultiWorkerMirroredStrategy` for several machines, with
``TF_CONFIG`` set on each worker before TensorFlow starts) and pass ``fit`` a dataset batched by
the *global* batch size; Keras splits every batch between the replicas.

- Each replica divides its per-example losses by the global batch size (an all-reduce of the
  replicas' batch sizes, so an uneven last batch is exact too) and the optimizers sum the
  replicas' gradients: a step equals the single-device step on the same global batch.
- The metrics average per-example values over all replicas and workers, reported once (the
  Distiller's ``distribute_reduction_method`` is "first"; Keras's default would add up the
  workers' identical copies).
- BatchNormalization in a network that trains normalises each replica's share of the batch
  (as in any Keras model); a frozen teacher's BatchNorm uses its moving statistics.
- Only the chief writes checkpoints and logs (Keras's callbacks see to it). Use
  `keras.callbacks.BackupAndRestore` to resume after a worker is pre-empted: it restores both
  networks and, in scheme A, the teacher's optimizer too.
- With `cache_teacher_logits`, cache on each worker from the same deterministic dataset before
  distributing, or cache once and save the logits.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from apprentice_tf import _checks, losses
from apprentice_tf.compat import keras, tf
from apprentice_tf.quantize import calibrate, quantize_model

__all__ = ["Distiller"]

_OPTIMIZER_TYPES = (keras.optimizers.Optimizer, keras.optimizers.legacy.Optimizer)


def _logits_shape(model: keras.Model, argument: str) -> tf.TensorShape | None:
    """The model's output shape, or None if it is not known before the first call."""
    try:
        outputs = model.outputs
    except AttributeError:
        outputs = None
    if not outputs:
        return None
    if len(outputs) != 1:
        raise ValueError(
            f"Distiller: `{argument}` must have a single output (the logits), received a model "
            f"with {len(outputs)} outputs."
        )
    shape = outputs[0].shape
    if shape.rank != 2:
        raise ValueError(
            f"Distiller: `{argument}` must output logits of shape (batch, classes), received "
            f"output shape {shape}."
        )
    return shape


def _softmax_in(layer: keras.layers.Layer) -> str | None:
    """How `layer` applies a softmax, or None: a Softmax layer, ``activation="softmax"``, or a
    TensorFlow call recorded as an operator layer (``tf.nn.softmax(x)``)."""
    layer = getattr(layer, "layer", layer)  # look inside a tfmot QuantizeWrapper
    if isinstance(layer, keras.layers.Softmax):
        return "a Softmax layer"
    if getattr(getattr(layer, "activation", None), "__name__", "") == "softmax":
        return 'activation="softmax"'
    symbol = str(getattr(layer, "symbol", ""))  # TFOpLambda: "nn.softmax", "math.softmax"
    if type(layer).__name__ == "TFOpLambda" and symbol.split(".")[-1] == "softmax":
        return f"tf.{symbol}"
    return None


def _check_logits_output(model: keras.Model, argument: str) -> None:
    """Refuse a model whose output is a softmax, however written: the losses expect logits."""
    outputs = getattr(model, "outputs", None)
    if outputs:
        last = outputs[0]._keras_history.layer  # noqa: SLF001
    elif getattr(model, "layers", None):
        last = model.layers[-1]
    else:
        return
    how = _softmax_in(last)
    if how is not None:
        raise ValueError(
            f"Distiller: `{argument}` ends with a softmax ({how}, layer '{last.name}'); the "
            "distillation losses need logits. Remove the softmax (activation=None on the last "
            "layer, no Softmax layer or tf.nn.softmax call after it)."
        )


def _sparse_labels(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Class ids from sparse or one-hot labels, shape (batch,)."""
    if labels.shape.rank == logits.shape.rank and labels.shape[-1] == logits.shape[-1] != 1:
        return tf.argmax(labels, axis=-1)
    if labels.shape.rank == logits.shape.rank:
        return tf.squeeze(labels, axis=-1)
    return labels


def _weighted(terms: dict[str, tf.Tensor], weights: tf.Tensor | None) -> dict[str, tf.Tensor]:
    """Each per-example term multiplied by its example's weight w_i (unchanged without)."""
    if weights is None:
        return terms
    return {name: term * weights for name, term in terms.items()}


def _class_weight_table(class_weight: Any) -> tf.Tensor | None:
    """{class id: weight} as a vector indexed by class id; classes not listed weigh 1."""
    if class_weight is None:
        return None
    if not isinstance(class_weight, dict) or not class_weight:
        raise ValueError(
            "Distiller.fit: `class_weight` must be a non-empty dict {class id: weight}, "
            f"received {class_weight!r}."
        )
    for key, value in class_weight.items():
        _checks.integer("Distiller.fit", "class_weight key", key, 0)
        _checks.real("Distiller.fit", f"class_weight[{key}]", value, 0)
    table = np.ones(max(int(k) for k in class_weight) + 1, np.float32)
    for key, value in class_weight.items():
        table[int(key)] = value
    return tf.constant(table)


def _global_batch_size(x: Any) -> tf.Tensor:
    """The number of examples in this step over all replicas (exact for uneven splits)."""
    local = tf.shape(tf.nest.flatten(x)[0])[0]
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.cast(local, tf.int64)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(local, tf.float32))
    return tf.cast(tf.round(total), tf.int64)


def _regularization(model: keras.Model | None) -> tf.Tensor:
    """The sum of a network's regularization losses (weight penalties), float32."""
    if model is None or not model.losses:
        return tf.constant(0.0)
    return tf.add_n([tf.cast(v, tf.float32) for v in model.losses])


def _copy_optimizer(optimizer: Any) -> Any:
    """A fresh optimizer with the same class and settings (no slots, step 0)."""
    return optimizer.__class__.from_config(optimizer.get_config())


@keras.utils.register_keras_serializable(package="apprentice_tf")
class Distiller(keras.Model):
    """Knowledge distillation of a (low-precision) student from a full-precision teacher.

    Minimises Mishra & Marr's Apprentice loss (ICLR 2018)

        L = α·H(y, p_T) + β·H(y, p_A) + γ·τ²·H(p_T(τ), p_A(τ)),

    p = softmax of the logits, p(τ) = softmax(logits/τ); τ² is Hinton et al.'s scaling. The
    α term trains only the teacher and is computed only when ``train_teacher=True`` (scheme A);
    with a frozen teacher (scheme B, C) it would have no gradient, so ``alpha`` is accepted and
    ignored. The γ term trains only the student: the teacher's logits are stop-gradient.

    Data: ``fit`` takes ``(x, y)`` batches, or ``(x, y, teacher_logits)`` batches from
    `cache_teacher_logits`, in which case the teacher is not run (and may be None). Per-example
    weights w_i: ``(x, y, w)`` (a third element of shape (batch,) is a weight, of shape
    (batch, classes) teacher logits), ``(x, y, teacher_logits, w)``, ``sample_weight=`` and
    ``fit(class_weight=...)``; each example's terms are multiplied by w_i and the loss is
    Σ_i w_i·L_i / N (Keras's reduction).

    Logged metrics: ``loss`` (the weighted sum above, plus regularization losses),
    ``student_ce`` = H(y, p_A), ``distillation`` = τ²·H(p_T(τ), p_A(τ)), the compiled metrics
    (e.g. ``accuracy``) on the student's logits, and, in scheme A (or when evaluating with a
    teacher), ``teacher_ce`` = H(y, p_T) and ``teacher_accuracy``. Terms are not multiplied
    by α, β, γ; with example weights they are Σ_i w_i·term_i / N.

    Attributes:
      student: the network being distilled; save ``d.student`` for deployment.
      teacher: the teacher, or None when logits are cached.
      teacher_optimizer: the teacher's optimizer in scheme A (tracked, so checkpoints and
        `keras.callbacks.BackupAndRestore` include its state). Learning-rate callbacks
        (ReduceLROnPlateau, LearningRateScheduler) change only the student's ``optimizer``; give
        the teacher's optimizer its own schedule if needed.
    """

    def __init__(
        self,
        *,
        student: keras.Model,
        teacher: keras.Model | None = None,
        alpha: float = 1.0,
        beta: float = 0.5,
        gamma: float = 0.5,
        temperature: float = 1.0,
        train_teacher: bool = False,
        teacher_optimizer: Any = None,
        extra_terms: Sequence[losses.DistillationTerm] = (),
        **kwargs: Any,
    ) -> None:
        """Check the settings and hold the two networks.

        Every argument is keyword-only: Keras 3's built-in ``keras.distillation.Distiller``
        takes ``(teacher, student)`` in the other order, and a positional call written for it
        would silently swap the roles here.

        Args:
          student: tf_keras model returning logits (no softmax), shape (batch, classes).
          teacher: tf_keras model with the same output shape, or None (cached logits, or
            ``gamma=0`` to train the student alone on labels).
          alpha, beta, gamma: finite weights >= 0 of the teacher's label loss, the student's
            label loss and the distillation loss (paper: 1, 0.5, 0.5).
          temperature: τ > 0 of the distillation term (paper: 1; high τ with low-bit students
            has been reported to hurt, start at 1).
          train_teacher: True for scheme A (joint training). False freezes the teacher: this
            sets ``teacher.trainable = False``.
          teacher_optimizer: scheme A only; the teacher's optimizer. Default: a fresh copy of
            the optimizer given to ``compile`` (same class and settings).
          extra_terms: `apprentice_tf.losses.DistillationTerm` objects (e.g.
            `apprentice_tf.losses.AttentionTransfer`) between the teacher's and the student's
            intermediate features; each adds weight·term to the student's per-example loss and
            is logged under its ``name``. They need a teacher (run at every step, so not with
            cached logits) and functional (or built Sequential) networks.
          **kwargs: passed to `keras.Model` (e.g. ``name``).

        Raises:
          ValueError: a student/teacher that is not a tf_keras Model (e.g. Keras 3), the same
            model (or shared weights) as both, different or non-(batch, classes) output shapes,
            a softmax output, negative or non-finite weights, weights with nothing to train,
            τ <= 0, ``train_teacher=True`` without a teacher, with ``alpha=0`` or with a teacher
            whose ``trainable`` is False, a ``teacher_optimizer`` without ``train_teacher``, or
            extra terms that are not `DistillationTerm` objects, have clashing names, name
            layers the networks do not have, or come without a teacher.
        """
        super().__init__(**kwargs)
        _checks.keras_object("Distiller", "student", student, keras.Model)
        if teacher is not None:
            _checks.keras_object("Distiller", "teacher", teacher, keras.Model)
            if teacher is student:
                raise ValueError(
                    f"Distiller: `student` and `teacher` are the same model ('{student.name}'); "
                    "distillation needs two networks."
                )
            shared = {id(v) for v in student.weights} & {id(v) for v in teacher.weights}
            if shared:
                raise ValueError(
                    f"Distiller: `student` ('{student.name}') and `teacher` ('{teacher.name}') "
                    f"share {len(shared)} weight variables; training the student would change "
                    "the teacher. Build the student from new layers."
                )
        train_teacher = _checks.flag("Distiller", "train_teacher", train_teacher)
        alpha = _checks.real("Distiller", "alpha", alpha, 0)
        beta = _checks.real("Distiller", "beta", beta, 0)
        gamma = _checks.real("Distiller", "gamma", gamma, 0)
        temperature = _checks.real("Distiller", "temperature", temperature, 0, low_open=True)
        if alpha == beta == gamma == 0.0:
            raise ValueError(
                "Distiller: `alpha`, `beta` and `gamma` are all 0, so nothing would be trained. "
                "The paper uses alpha=1, beta=0.5, gamma=0.5."
            )
        if beta == gamma == 0.0:
            raise ValueError(
                f"Distiller: `beta` and `gamma` are both 0 (alpha={alpha}), so the student would "
                "not be trained: beta weighs its label loss, gamma its distillation loss."
            )
        if train_teacher:
            if teacher is None:
                raise ValueError(
                    "Distiller: `train_teacher=True` (scheme A, joint training) needs a "
                    "`teacher`, received teacher=None."
                )
            if alpha == 0.0:
                raise ValueError(
                    "Distiller: `train_teacher=True` with `alpha=0`: the teacher's only loss is "
                    "alpha·H(y, p_T), so it would not learn. Use alpha > 0 (paper: 1) or "
                    "train_teacher=False."
                )
            if not teacher.trainable:
                raise ValueError(
                    f"Distiller: `train_teacher=True` but teacher '{teacher.name}' has "
                    "trainable=False. Set `teacher.trainable = True` for joint training "
                    "(scheme A), or pass train_teacher=False to distil from a frozen teacher."
                )
        elif teacher_optimizer is not None:
            raise ValueError(
                "Distiller: `teacher_optimizer` was given but `train_teacher=False`, so the "
                "teacher is frozen and the optimizer would never be used."
            )
        if teacher_optimizer is not None and not isinstance(teacher_optimizer, _OPTIMIZER_TYPES):
            raise ValueError(
                "Distiller: `teacher_optimizer` must be a tf_keras optimizer, received "
                f"{type(teacher_optimizer).__module__}.{type(teacher_optimizer).__name__}."
            )
        student_shape = _logits_shape(student, "student")
        _check_logits_output(student, "student")
        if teacher is not None:
            teacher_shape = _logits_shape(teacher, "teacher")
            _check_logits_output(teacher, "teacher")
            if (
                student_shape is not None
                and teacher_shape is not None
                and not student_shape[1:].is_compatible_with(teacher_shape[1:])
            ):
                raise ValueError(
                    f"Distiller: student and teacher outputs differ: student '{student.name}' "
                    f"outputs {student_shape}, teacher '{teacher.name}' outputs "
                    f"{teacher_shape}. Both must give logits over the same classes."
                )
            if not train_teacher:
                teacher.trainable = False
        if not student.trainable:
            raise ValueError(
                f"Distiller: student '{student.name}' has trainable=False; set "
                "`student.trainable = True`."
            )

        self.student = student
        self.teacher = teacher
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.temperature = temperature
        self.train_teacher = train_teacher
        self._default_teacher_optimizer = teacher_optimizer is None
        self.teacher_optimizer = teacher_optimizer

        # The logs are metric results, already aggregated over all replicas and workers; Keras's
        # default ("auto" = "sum" off TPU) would add up the workers' copies under
        # MultiWorkerMirroredStrategy.
        self.distribute_reduction_method = "first"
        self._class_weights: tf.Tensor | None = None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.student_ce_tracker = keras.metrics.Mean(name="student_ce")
        self.distillation_tracker = keras.metrics.Mean(name="distillation")
        self.teacher_ce_tracker = keras.metrics.Mean(name="teacher_ce")
        self.teacher_accuracy = keras.metrics.SparseCategoricalAccuracy(name="teacher_accuracy")
        self._init_extra_terms(extra_terms)
        if student.built:  # its variables exist: saving needs no sample call first
            self.built = True

    # ----------------------------------------------------------------------------------------
    # Extra distillation terms (features of intermediate layers)

    def _init_extra_terms(self, extra_terms: Sequence[losses.DistillationTerm]) -> None:
        """Check the terms and build the feature taps once.

        The taps are multi-output views of the two networks (same layers, same weights):
        ``student_taps(x) = [logits, *features]``, so each step runs each network once.
        """
        if isinstance(extra_terms, losses.DistillationTerm):
            extra_terms = (extra_terms,)
        terms = tuple(extra_terms)
        reserved = {"loss", "student_ce", "distillation", "teacher_ce", "teacher_accuracy"}
        names: set[str] = set()
        for index, term in enumerate(terms):
            if not isinstance(term, losses.DistillationTerm):
                raise ValueError(
                    f"Distiller: `extra_terms[{index}]` must be an "
                    "apprentice_tf.losses.DistillationTerm (e.g. losses.AttentionTransfer), "
                    f"received {type(term).__module__}.{type(term).__name__}."
                )
            if term.name in reserved or term.name in names:
                raise ValueError(
                    f"Distiller: `extra_terms[{index}]` is named {term.name!r}, which another "
                    f"term or metric already uses ({sorted(reserved | names)}); give it another "
                    "`name`."
                )
            names.add(term.name)
        if terms and self.teacher is None:
            raise ValueError(
                "Distiller: `extra_terms` compare the teacher's and the student's features, so "
                "they need a `teacher`, received teacher=None."
            )
        # Plain attributes, not tracked by Keras: the terms hold settings, the taps reuse the
        # two networks' layers (already tracked), and a Distiller without extra terms saves
        # exactly as before.
        self._self_setattr_tracking = False
        try:
            self.extra_terms = terms
            self._term_trackers = [keras.metrics.Mean(name=term.name) for term in terms]
            self._student_taps = self._teacher_taps = None
            if terms:
                self._student_taps, self._student_positions = self._taps(self.student, "student", 1)
                self._teacher_taps, self._teacher_positions = self._taps(self.teacher, "teacher", 0)
        finally:
            self._self_setattr_tracking = True

    def _taps(
        self, network: keras.Model, role: str, side: int
    ) -> tuple[keras.Model, dict[str, int]]:
        """``network``'s logits and the outputs of every layer the terms tap on this side,
        with each tapped layer's position among the features."""
        layers = list(dict.fromkeys(name for t in self.extra_terms for name in t.layers(side)))
        known = {layer.name for layer in network.layers}
        missing = [name for name in layers if name not in known]
        if missing:
            raise ValueError(
                f"Distiller: `extra_terms` tap {role} layer(s) {missing}, but {role} "
                f"'{network.name}' has no such layer."
            )
        if not getattr(network, "inputs", None):
            raise ValueError(
                f"Distiller: `extra_terms` need the {role}'s graph, but {role} "
                f"'{network.name}' has no known inputs: build it functionally (or start a "
                "Sequential model with keras.Input)."
            )
        outputs = [network.outputs[0], *[network.get_layer(name).output for name in layers]]
        taps = keras.Model(network.inputs, outputs, name=f"{network.name}_taps")
        return taps, {name: i for i, name in enumerate(layers)}

    def _extra_terms(
        self, teacher_features: list[tf.Tensor], student_features: list[tf.Tensor]
    ) -> dict[str, tf.Tensor]:
        """{term name: weight · term per example} for every extra term."""
        values = {}
        for term in self.extra_terms:
            teacher = [teacher_features[self._teacher_positions[n]] for n in term.layers(0)]
            student = [student_features[self._student_positions[n]] for n in term.layers(1)]
            values[term.name] = term.weight * term.per_example(teacher, student)
        return values

    # ----------------------------------------------------------------------------------------
    # Keras plumbing

    def compile(
        self, optimizer: Any = "rmsprop", loss: Any = None, metrics: Any = None, **kwargs: Any
    ) -> None:
        """Keras's `compile`; the loss is the Distiller's own (weights set in ``__init__``).

        ``metrics`` are computed on the student's logits (``"accuracy"`` works on logits). In
        scheme A without a ``teacher_optimizer``, the teacher gets a fresh copy of ``optimizer``.

        Raises:
          ValueError: a ``loss`` or ``loss_weights`` is given.
        """
        if loss is not None or kwargs.get("loss_weights") is not None:
            raise ValueError(
                "Distiller.compile: the loss is the Apprentice loss, set by Distiller(alpha=, "
                "beta=, gamma=, temperature=); do not pass `loss` or `loss_weights` (received "
                f"loss={loss!r}, loss_weights={kwargs.get('loss_weights')!r})."
            )
        # Batches of (x, y, teacher_logits) look like sample-weighted data to Keras; an explicit
        # (empty) weighted_metrics silences its warning about that.
        kwargs.setdefault("weighted_metrics", [])
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)
        if self.train_teacher and self._default_teacher_optimizer:
            self.teacher_optimizer = _copy_optimizer(self.optimizer)
        self._build_optimizers()

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Re-compile when a saved Distiller is loaded (`keras.models.load_model`)."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    def _build_optimizers(self) -> None:
        """Create each optimizer's slots for its own network's variables now.

        Otherwise Keras code that builds ``optimizer`` for the whole model (BackupAndRestore,
        loading a ``.keras`` file) would give the student's optimizer slots for the teacher's
        variables, and the teacher's optimizer state could only be restored lazily.
        """
        pairs = [(self.optimizer, self.student)]
        if self.train_teacher:
            pairs.append((self.teacher_optimizer, self.teacher))
        for optimizer, network in pairs:
            if network.built and isinstance(optimizer, keras.optimizers.Optimizer):
                optimizer.build(network.trainable_variables)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """Every tracker Keras resets at the start of each epoch and evaluation."""
        metrics = [
            self.loss_tracker,
            self.student_ce_tracker,
            self.distillation_tracker,
            self.teacher_ce_tracker,
            self.teacher_accuracy,
            *getattr(self, "_term_trackers", ()),
        ]
        compiled = getattr(self, "compiled_metrics", None)
        if self._is_compiled and compiled is not None:
            metrics += compiled.metrics
        return metrics

    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        """The student's logits."""
        return self.student(inputs, training=training)

    # ----------------------------------------------------------------------------------------
    # Steps

    def _unpack(self, data: Any) -> tuple[Any, Any, tf.Tensor | None, tf.Tensor | None]:
        """(x, y, cached teacher logits or None, sample weights or None) of one batch."""
        if isinstance(data, tuple) and len(data) == 4:
            x, y, cached, weights = data
        else:
            x, y, third = keras.utils.unpack_x_y_sample_weight(data)
            cached = weights = None
            if third is not None:
                third = tf.convert_to_tensor(third)
                if third.shape.rank == 2 and third.shape[-1] != 1:
                    cached = third
                elif third.shape.rank in (1, 2):
                    weights = third
                else:
                    raise ValueError(
                        "Distiller: the third element of each batch must be teacher logits of "
                        "shape (batch, classes) or sample weights of shape (batch,), received "
                        f"shape {third.shape}. Yield (x, y, teacher_logits, sample_weight) for "
                        "both."
                    )
        if y is None and (self.beta > 0 or self.train_teacher):
            raise ValueError(
                "Distiller: the data has no labels, but beta > 0 (student label loss) or "
                "train_teacher=True need them. Yield (x, y) or (x, y, teacher_logits), or use "
                "beta=0 with a frozen teacher for label-free distillation."
            )
        if cached is not None:
            cached = tf.convert_to_tensor(cached)
            if cached.shape.rank != 2:
                raise ValueError(
                    "Distiller: teacher logits must have shape (batch, classes), received shape "
                    f"{cached.shape}."
                )
            if self.train_teacher:
                raise ValueError(
                    "Distiller: cached teacher logits with train_teacher=True; cached logits "
                    "come from a frozen teacher (scheme B/C), joint training (A) needs live ones."
                )
            cached = tf.stop_gradient(tf.cast(cached, tf.float32))
        if weights is not None:
            weights = tf.reshape(tf.cast(weights, tf.float32), [-1])
        return x, y, cached, weights

    def _example_weights(
        self, y: Any, logits: tf.Tensor, weights: tf.Tensor | None, training: bool
    ) -> tf.Tensor | None:
        """w_i = sample_weight_i · class_weight[y_i] (``fit``'s class_weight, training only)."""
        table = self._class_weights if training else None
        if table is None:
            return weights
        if y is None:
            raise ValueError("Distiller.fit: `class_weight` needs labels; the data has none.")
        labels = tf.cast(_sparse_labels(tf.convert_to_tensor(y), logits), tf.int32)
        listed = labels < tf.size(table)
        by_class = tf.where(listed, tf.gather(table, tf.where(listed, labels, 0)), 1.0)
        return by_class if weights is None else weights * by_class

    def _terms(
        self, x: Any, y: Any, cached: tf.Tensor | None, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Student logits and the per-example terms that apply to this step.

        With extra terms, each network runs once, through its taps (logits and features).
        """
        train_it = training and self.train_teacher
        extra: dict[str, tf.Tensor] = {}
        if self.extra_terms:
            if cached is not None:
                raise ValueError(
                    "Distiller: cached teacher logits carry no features, and `extra_terms` "
                    "need the teacher's; pass (x, y) batches so the teacher runs."
                )
            student_logits, *student_features = self._student_taps(x, training=training)
            teacher_logits, *teacher_features = self._teacher_taps(x, training=train_it)
            teacher_logits = tf.cast(teacher_logits, tf.float32)
            extra = self._extra_terms(teacher_features, student_features)
        else:
            student_logits = self.student(x, training=training)
            teacher_logits = cached
            # In training, a frozen teacher is only run when its logits are used (gamma > 0).
            needed = not training or self.gamma > 0 or self.train_teacher
            if teacher_logits is None and self.teacher is not None and needed:
                teacher_logits = tf.cast(self.teacher(x, training=train_it), tf.float32)
        if teacher_logits is None and training and self.gamma > 0:
            raise ValueError(
                "Distiller: gamma > 0 needs teacher logits, but there is no teacher and the data "
                "has no third element. Pass a teacher or a dataset from cache_teacher_logits()."
            )
        terms: dict[str, tf.Tensor] = {}
        if y is not None:
            terms["student_ce"] = losses.cross_entropy(y, student_logits, reduction="none")
        if teacher_logits is not None:
            if not teacher_logits.shape[1:].is_compatible_with(student_logits.shape[1:]):
                raise ValueError(
                    f"Distiller: teacher logits of shape {teacher_logits.shape} do not match the "
                    f"student's logits of shape {student_logits.shape}."
                )
            terms["distillation"] = losses.distillation_loss(
                teacher_logits, student_logits, self.temperature, reduction="none"
            )
            if y is not None and (self.train_teacher or not training):
                terms["teacher_ce"] = losses.cross_entropy(y, teacher_logits, reduction="none")
                self.teacher_accuracy.update_state(
                    _sparse_labels(tf.convert_to_tensor(y), teacher_logits), teacher_logits
                )
        if not terms:
            raise ValueError(
                "Distiller: nothing to compute: the data has no labels and there are no teacher "
                "logits (no teacher, no third element). Yield (x, y) or (x, y, teacher_logits)."
            )
        terms.update(extra)
        return student_logits, terms

    def _student_per_example(self, terms: dict[str, tf.Tensor]) -> tf.Tensor:
        total = 0.0
        if "student_ce" in terms and self.beta:
            total += self.beta * terms["student_ce"]
        if "distillation" in terms and self.gamma:
            total += self.gamma * terms["distillation"]
        for term in self.extra_terms:  # already weighted
            total += terms[term.name]
        if isinstance(total, float):
            total = tf.zeros_like(next(iter(terms.values())))
        return total

    def _logs(
        self,
        y: Any,
        student_logits: tf.Tensor,
        terms: dict[str, tf.Tensor],
        total: tf.Tensor,
        weights: tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        self.loss_tracker.update_state(total)
        trackers = [self.loss_tracker]
        for name, tracker in (
            ("student_ce", self.student_ce_tracker),
            ("distillation", self.distillation_tracker),
            ("teacher_ce", self.teacher_ce_tracker),
        ):
            if name in terms:
                tracker.update_state(terms[name])
                trackers.append(tracker)
        if "teacher_ce" in terms:
            trackers.append(self.teacher_accuracy)
        for term, tracker in zip(self.extra_terms, self._term_trackers, strict=True):
            tracker.update_state(terms[term.name])
            trackers.append(tracker)
        logs = {tracker.name: tracker.result() for tracker in trackers}
        if y is not None and self.compiled_metrics is not None:
            self.compiled_metrics.update_state(y, student_logits, weights)
            for metric in self.compiled_metrics.metrics:
                result = metric.result()
                if isinstance(result, dict):
                    logs.update(result)
                else:
                    logs[metric.name] = result
        return logs

    def fit(self, *args: Any, class_weight: dict | None = None, **kwargs: Any) -> Any:
        """Keras's `fit`; ``class_weight`` {class id: weight} weighs every loss term.

        Each example's terms (β·H(y, p_A), γ·τ²·H(p_T(τ), p_A(τ)) and, in scheme A,
        α·H(y, p_T)) are multiplied by w_i = sample_weight_i · class_weight[y_i] (classes not
        listed weigh 1); the loss is Σ_i w_i·L_i / N over the N examples of the batch, as Keras's
        own losses reduce. Sample weights come as ``sample_weight=`` with arrays, or as the
        last element of ``(x, y, w)`` or ``(x, y, teacher_logits, w)`` batches.
        """
        table = _class_weight_table(class_weight)
        if table is not None or self._class_weights is not None:
            self.train_function = None  # the traced step reads the table
        self._class_weights = table
        try:
            return super().fit(*args, **kwargs)
        finally:
            if table is not None:
                self._class_weights = None
                self.train_function = None

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One optimizer step for the student (and, in scheme A, the teacher).

        Per replica: loss_A = Σ_i (β·H(y_i, p_A) + γ·τ²·H(p_T(τ), p_A(τ)))_i / global_batch
        (+ the student's regularization losses / replicas) updates the student with
        ``optimizer``; in scheme A, loss_T = Σ_i α·H(y_i, p_T)_i / global_batch updates the
        teacher with ``teacher_optimizer``, from the same forward pass (teacher in training mode).
        """
        x, y, cached, weights = self._unpack(data)
        global_batch = _global_batch_size(x)
        with tf.GradientTape(persistent=True) as tape:
            student_logits, terms = self._terms(x, y, cached, training=True)
            weights = self._example_weights(y, student_logits, weights, training=True)
            terms = _weighted(terms, weights)
            student_per_example = self._student_per_example(terms)
            # Weight penalties are the same on every replica: each adds its 1/replicas share.
            penalty = _regularization(self.student)
            student_loss = tf.nn.compute_average_loss(
                student_per_example, global_batch_size=global_batch
            ) + tf.nn.scale_regularization_loss(penalty)
            if self.train_teacher:
                teacher_per_example = self.alpha * terms["teacher_ce"]
                teacher_penalty = _regularization(self.teacher)
                teacher_loss = tf.nn.compute_average_loss(
                    teacher_per_example, global_batch_size=global_batch
                ) + tf.nn.scale_regularization_loss(teacher_penalty)
        self.optimizer.minimize(student_loss, self.student.trainable_variables, tape=tape)
        total = student_per_example + penalty
        if self.train_teacher:
            self.teacher_optimizer.minimize(
                teacher_loss, self.teacher.trainable_variables, tape=tape
            )
            total += teacher_per_example + teacher_penalty
        del tape
        return self._logs(y, student_logits, terms, total, weights)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Evaluate the student (and the teacher, if there is one) in inference mode."""
        x, y, cached, weights = self._unpack(data)
        student_logits, terms = self._terms(x, y, cached, training=False)
        terms = _weighted(terms, weights)
        total = self._student_per_example(terms) + _regularization(self.student)
        if self.train_teacher and "teacher_ce" in terms:
            total += self.alpha * terms["teacher_ce"] + _regularization(self.teacher)
        return self._logs(y, student_logits, terms, total, weights)

    # ----------------------------------------------------------------------------------------
    # Serialization and construction

    def get_config(self) -> dict[str, Any]:
        """Settings plus the serialized student and teacher (architecture, not weights)."""
        teacher_optimizer = None
        if not self._default_teacher_optimizer and self.teacher_optimizer is not None:
            teacher_optimizer = keras.optimizers.serialize(self.teacher_optimizer)
        return {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": (
                None if self.teacher is None else keras.saving.serialize_keras_object(self.teacher)
            ),
            "alpha": self.alpha,
            "beta": self.beta,
            "gamma": self.gamma,
            "temperature": self.temperature,
            "train_teacher": self.train_teacher,
            "teacher_optimizer": teacher_optimizer,
            "extra_terms": [keras.saving.serialize_keras_object(t) for t in self.extra_terms],
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict | None = None) -> Distiller:
        """Rebuild from `get_config`; load quantized students inside `atf.quantize_scope()`."""
        config = copy.deepcopy(config)  # deserializers (tfmot's) edit nested dicts in place
        config["student"] = keras.saving.deserialize_keras_object(
            config["student"], custom_objects=custom_objects
        )
        if config.get("teacher") is not None:
            config["teacher"] = keras.saving.deserialize_keras_object(
                config["teacher"], custom_objects=custom_objects
            )
        if config.get("teacher_optimizer") is not None:
            config["teacher_optimizer"] = keras.optimizers.deserialize(
                config["teacher_optimizer"], custom_objects=custom_objects
            )
        config["extra_terms"] = [
            keras.saving.deserialize_keras_object(t, custom_objects=custom_objects)
            for t in config.get("extra_terms") or ()
        ]
        return cls(**config)

    @classmethod
    def from_pretrained_student(
        cls,
        float_student: keras.Model,
        teacher: keras.Model,
        weight_bits: str | int = "ternary",
        activation_bits: int | None = 8,
        keep_first_last: bool = True,
        skip: tuple[str, ...] = (),
        calibration_data: Any = None,
        calibration_steps: int = 20,
        **distiller_kwargs: Any,
    ) -> Distiller:
        """Scheme C: lower a trained float student's precision and distil into it.

        The float weights are copied into a quantization-aware model
        (`apprentice_tf.quantize.quantize_model`: ternary or k-bit weights except the first conv
        and last dense, k-bit activations), the teacher is frozen, and the returned Distiller
        fine-tunes the low-precision student from the teacher (Mishra & Marr's scheme C).
        Fine-tune for a few epochs at a lower learning rate than training from scratch (e.g.
        a tenth) so the copied weights are adjusted rather than overwritten.

        Args:
          float_student: the trained full-precision student (Sequential or functional).
          teacher: the trained teacher; it is frozen (``trainable = False``).
          weight_bits, activation_bits, keep_first_last, skip: passed to `quantize_model`.
          calibration_data: training batches (``x`` or ``(x, y)``); when given, the first
            `calibration_steps` of them re-estimate the new student's BatchNorm statistics and
            activation ranges before distillation starts (`apprentice_tf.quantize.calibrate`:
            no trained weight changes; without it the ranges start at tfmot's [−6, 6]).
          calibration_steps: batches of `calibration_data` to use.
          **distiller_kwargs: alpha, beta, gamma, temperature, name (``train_teacher`` must
            stay False).

        Returns:
          A `Distiller` whose ``student`` is the new low-precision model.
        """
        if distiller_kwargs.get("train_teacher"):
            raise ValueError(
                "Distiller.from_pretrained_student: scheme C distils from a frozen teacher; "
                "received train_teacher=True."
            )
        distiller_kwargs.pop("train_teacher", None)
        if teacher is None:
            raise ValueError(
                "Distiller.from_pretrained_student: scheme C needs a trained `teacher`, "
                "received None."
            )
        owner = "Distiller.from_pretrained_student"
        _checks.keras_object(owner, "float_student", float_student, keras.Model)
        _checks.keras_object(owner, "teacher", teacher, keras.Model)
        student = quantize_model(
            float_student,
            weight_bits=weight_bits,
            activation_bits=activation_bits,
            keep_first_last=keep_first_last,
            skip=skip,
        )
        if calibration_data is not None:
            calibrate(student, calibration_data, steps=calibration_steps)
        teacher.trainable = False
        return cls(student=student, teacher=teacher, train_teacher=False, **distiller_kwargs)
