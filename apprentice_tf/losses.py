"""The Apprentice loss terms, temperature-scaled distillation and attention transfer.

Plain functions of tensors; `apprentice_tf.distiller.Distiller` combines them. Notation (as in
``docs/METHODS.md``): teacher T, student (apprentice) A, logits z, p = softmax(z),
p(τ) = softmax(z/τ), y the label, H(q, p) = -Σ_k q_k·log p_k the cross-entropy.

Apprentice (Mishra & Marr, "Apprentice: Using Knowledge Distillation Techniques To Improve
Low-Precision Network Accuracy", ICLR 2018, arXiv:1711.05852)::

    L(x; W_T, W_A) = α·H(y, p_T) + β·H(y, p_A) + γ·τ²·H(p_T(τ), p_A(τ))

with α = 1, β = 0.5, γ = 0.5 and τ = 1 in the paper. The τ² factor is Hinton et al.'s scaling
("Distilling the Knowledge in a Neural Network", 2015): the gradient of the soft term shrinks as
1/τ², so multiplying by τ² keeps its size comparable to the hard term as τ changes (it is 1 at
τ = 1, the paper's setting).

Reductions and distribution. Every function computes a per-example loss first. With
``reduction="mean"`` (default) it returns ``tf.nn.compute_average_loss(per_example,
global_batch_size=...)``: the sum over the examples it was given divided by the global batch size.
Outside a `tf.distribute` strategy, or with ``global_batch_size=None`` in a replica whose batch is
an even share of the global batch, that is the batch mean; inside a replica it is this replica's
share of the global mean, so that the sum over replicas (what the optimizer's gradient all-reduce
computes) equals the single-device loss. ``reduction="none"`` returns the per-example vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apprentice_tf import _checks
from apprentice_tf.compat import keras, tf

__all__ = [
    "cross_entropy",
    "distillation_loss",
    "apprentice_loss",
    "attention_map",
    "attention_transfer_loss",
    "DistillationTerm",
    "AttentionTransfer",
    "feature_layers",
    "match_stages",
    "REDUCTIONS",
    "AT_FORMS",
]

REDUCTIONS = ("mean", "none")
#: The distances `attention_transfer_loss` and `AttentionTransfer` know.
AT_FORMS = ("norm", "squared_mean")


def _check_reduction(reduction: Any, owner: str) -> None:
    _checks.choice(owner, "reduction", reduction, REDUCTIONS)


def _reduce(
    per_example: tf.Tensor, reduction: str, global_batch_size: int | tf.Tensor | None
) -> tf.Tensor:
    if reduction == "none":
        return per_example
    return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)


def _logits(logits: Any, name: str, owner: str) -> tf.Tensor:
    logits = tf.convert_to_tensor(logits)
    if not logits.dtype.is_floating:
        raise ValueError(
            f"{owner}: `{name}` must be floating point logits, received {logits.dtype}."
        )
    if logits.shape.rank is not None and logits.shape.rank < 1:
        raise ValueError(
            f"{owner}: `{name}` must have a class axis, received shape {logits.shape}."
        )
    # Mixed precision: the softmax and log are computed in float32.
    return tf.cast(logits, tf.float32)


def cross_entropy(
    labels: Any,
    logits: Any,
    *,
    reduction: str = "mean",
    global_batch_size: int | tf.Tensor | None = None,
) -> tf.Tensor:
    """Cross-entropy H(y, softmax(z)) = -log p_y between labels and logits.

    Args:
      labels: integer class ids, shape (batch,) or (batch, 1) (the sparse form), or one-hot (or
        soft) targets with the same shape as `logits`, for which H(y, p) = -Σ_k y_k·log p_k.
      logits: unnormalised scores z, shape (batch, classes).
      reduction: "mean" (see the module docstring for the distributed mean) or "none" for the
        per-example losses, shape (batch,).
      global_batch_size: the divisor of the "mean" reduction; None means the local batch size
        times the number of replicas in sync.

    Returns:
      A scalar, or a (batch,) vector with ``reduction="none"``.

    Raises:
      ValueError: labels whose shape fits neither the sparse nor the one-hot form, non-float
        logits, or an unknown reduction.
    """
    _check_reduction(reduction, "cross_entropy")
    logits = _logits(logits, "logits", "cross_entropy")
    labels = tf.convert_to_tensor(labels)
    rank, label_rank = logits.shape.rank, labels.shape.rank
    classes = logits.shape[-1]
    if label_rank == rank and labels.shape[-1] == classes and classes != 1:
        per_example = tf.nn.softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.float32), logits=logits
        )
    elif label_rank == rank and labels.shape[-1] == 1:
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(tf.squeeze(labels, axis=-1), tf.int32), logits=logits
        )
    elif label_rank is not None and rank is not None and label_rank == rank - 1:
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.int32), logits=logits
        )
    else:
        raise ValueError(
            "cross_entropy: `labels` must be class ids of shape (batch,) or (batch, 1), or one-hot "
            f"targets of the logits' shape {logits.shape}; received labels of shape {labels.shape}."
        )
    return _reduce(per_example, reduction, global_batch_size)


def distillation_loss(
    teacher_logits: Any,
    student_logits: Any,
    temperature: float = 1.0,
    *,
    reduction: str = "mean",
    global_batch_size: int | tf.Tensor | None = None,
) -> tf.Tensor:
    """Soft-target loss τ²·H(p_T(τ), p_S(τ)) = -τ²·Σ_k softmax(z_T/τ)_k·log softmax(z_S/τ)_k.

    The γ term of Mishra & Marr's Apprentice loss, with Hinton et al.'s τ² scaling (which keeps
    the gradient's size independent of τ; it is 1 at the paper's τ = 1). The teacher's logits are
    a target: they pass through `tf.stop_gradient`, so this term never trains the teacher. It is
    the cross-entropy, not the KL divergence: the two differ by the teacher's entropy, which has
    no gradient with respect to the student, so the student's updates are the same.

    Args:
      teacher_logits: z_T, shape (batch, classes).
      student_logits: z_S, same shape.
      temperature: τ > 0.
      reduction, global_batch_size: as in `cross_entropy`.

    Returns:
      A scalar, or a (batch,) vector with ``reduction="none"``.

    Raises:
      ValueError: τ not a finite positive number, or logits of different shapes.
    """
    _check_reduction(reduction, "distillation_loss")
    tau = _checks.real("distillation_loss", "temperature", temperature, 0, low_open=True)
    teacher_logits = tf.stop_gradient(
        _logits(teacher_logits, "teacher_logits", "distillation_loss")
    )
    student_logits = _logits(student_logits, "student_logits", "distillation_loss")
    if not teacher_logits.shape.is_compatible_with(student_logits.shape):
        raise ValueError(
            "distillation_loss: teacher and student logits must have the same shape, received "
            f"{teacher_logits.shape} (teacher) and {student_logits.shape} (student)."
        )
    soft_targets = tf.nn.softmax(teacher_logits / tau, axis=-1)
    per_example = tf.nn.softmax_cross_entropy_with_logits(
        labels=soft_targets, logits=student_logits / tau
    )
    return _reduce(tau * tau * per_example, reduction, global_batch_size)


def apprentice_loss(
    labels: Any,
    teacher_logits: Any,
    student_logits: Any,
    alpha: float = 1.0,
    beta: float = 0.5,
    gamma: float = 0.5,
    temperature: float = 1.0,
    *,
    reduction: str = "mean",
    global_batch_size: int | tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
    """The Apprentice loss α·H(y, p_T) + β·H(y, p_A) + γ·τ²·H(p_T(τ), p_A(τ)) and its terms.

    Mishra & Marr (ICLR 2018) use α = 1, β = 0.5, γ = 0.5, τ = 1. The α term's gradient reaches
    only the teacher, the γ term's only the student (its teacher logits are stop-gradient).

    Args:
      labels: as in `cross_entropy`.
      teacher_logits: z_T, shape (batch, classes).
      student_logits: z_A, same shape.
      alpha, beta, gamma: weights of the three terms.
      temperature: τ of the distillation term.
      reduction, global_batch_size: as in `cross_entropy`, applied to every entry.

    Returns:
      ``{"teacher_ce": H(y, p_T), "student_ce": H(y, p_A), "distillation": τ²·H(p_T(τ), p_A(τ)),
      "loss": the weighted sum}``: the terms unweighted, the sum weighted.
    """
    _check_reduction(reduction, "apprentice_loss")
    terms = {
        "teacher_ce": cross_entropy(labels, teacher_logits, reduction="none"),
        "student_ce": cross_entropy(labels, student_logits, reduction="none"),
        "distillation": distillation_loss(
            teacher_logits, student_logits, temperature, reduction="none"
        ),
    }
    terms["loss"] = (
        alpha * terms["teacher_ce"] + beta * terms["student_ce"] + gamma * terms["distillation"]
    )
    return {name: _reduce(value, reduction, global_batch_size) for name, value in terms.items()}


def attention_map(features: Any) -> tf.Tensor:
    """Spatial attention map a = vec(mean_c F_c²) / ‖vec(mean_c F_c²)‖₂ of a feature map.

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017 (the activation-based
    map with p = 2): square the activations, average over the channel (last) axis, flatten the
    spatial positions and normalise each example's map to unit L2 norm.

    Args:
      features: channels-last activations, shape (batch, ..., channels), e.g. (batch, H, W, C).

    Returns:
      float32 tensor of shape (batch, H·W·...), each row of unit norm (all-zero rows stay zero).
    """
    features = tf.cast(tf.convert_to_tensor(features), tf.float32)
    if features.shape.rank is not None and features.shape.rank < 3:
        raise ValueError(
            "attention_map: `features` must be channels-last activations of shape "
            f"(batch, ..., channels) with at least one spatial axis, received {features.shape}."
        )
    energy = tf.reduce_mean(tf.square(features), axis=-1)
    flat = tf.reshape(energy, [tf.shape(energy)[0], -1])
    return tf.math.l2_normalize(flat, axis=-1, epsilon=1e-12)


def attention_transfer_loss(
    teacher_features: Any | Sequence[Any],
    student_features: Any | Sequence[Any],
    beta: float = 1000.0,
    *,
    form: str = "norm",
    reduction: str = "mean",
    global_batch_size: int | tf.Tensor | None = None,
) -> tf.Tensor:
    """Attention transfer β·Σ_stages mean_batch ‖a_T/‖a_T‖ − a_S/‖a_S‖‖₂ (Zagoruyko & Komodakis).

    For each matched stage j, a_T and a_S are `attention_map`s of the teacher's and the student's
    activations (already unit norm). HAKD (Turner et al., arXiv:1810.10460) adds this term to
    the distillation loss, following Moonshine (Crowley et al., NeurIPS 2018), whose published
    weight is β = 1000.

    Which distance β = 1000 goes with is not certain, so it is an option:

    - ``form="norm"`` (default, the formula in the papers and ``docs/METHODS.md``):
      ‖a_T − a_S‖₂ per example.
    - ``form="squared_mean"``: mean over positions of (a_T − a_S)², per example. The authors'
      public code (``at_loss`` in szagoruyko/attention-transfer, reused by Moonshine) computes
      this, and β = 1000 was tuned with it; it is smaller than the norm form by roughly
      ‖a_T − a_S‖₂ / (H·W), so use it if you take β = 1000 from those experiments.

    Args:
      teacher_features: one activation tensor (batch, H, W, C_T) or a sequence of them, one per
        stage.
      student_features: the same number of stages; stage j must have the teacher's spatial shape
        (channel counts may differ).
      beta: weight β ≥ 0.
      form: "norm" or "squared_mean", see above.
      reduction, global_batch_size: as in `cross_entropy`.

    Returns:
      A scalar, or a (batch,) vector with ``reduction="none"``. The teacher's maps are
      stop-gradient.

    Raises:
      ValueError: different numbers of stages, a stage whose spatial shapes differ (pool or resize
        one side before calling), a negative β or an unknown form.
    """
    _check_reduction(reduction, "attention_transfer_loss")
    _checks.choice("attention_transfer_loss", "form", form, AT_FORMS)
    beta = _checks.real("attention_transfer_loss", "beta", beta, 0)
    teacher_stages = _as_stages(teacher_features)
    student_stages = _as_stages(student_features)
    if len(teacher_stages) != len(student_stages) or not teacher_stages:
        raise ValueError(
            "attention_transfer_loss: teacher and student need the same (non-zero) number of "
            f"stages, received {len(teacher_stages)} teacher and {len(student_stages)} student "
            "feature maps."
        )
    per_example = None
    for index, (teacher, student) in enumerate(zip(teacher_stages, student_stages, strict=True)):
        t_spatial, s_spatial = teacher.shape[1:-1], student.shape[1:-1]
        if not t_spatial.is_compatible_with(s_spatial):
            raise ValueError(
                f"attention_transfer_loss: stage {index} has teacher spatial shape "
                f"{t_spatial} and student spatial shape {s_spatial}; they must be equal. Match "
                "stages of equal resolution, or pool/resize one side first."
            )
        difference = tf.stop_gradient(attention_map(teacher)) - attention_map(student)
        if form == "norm":
            # sqrt with a floor: the gradient of ‖d‖ at d = 0 is otherwise NaN.
            distance = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(difference), axis=-1), 1e-24))
        else:
            distance = tf.reduce_mean(tf.square(difference), axis=-1)
        per_example = distance if per_example is None else per_example + distance
    return _reduce(float(beta) * per_example, reduction, global_batch_size)


def _as_stages(features: Any) -> list[tf.Tensor]:
    if isinstance(features, (list, tuple)):
        return [tf.convert_to_tensor(f) for f in features]
    return [tf.convert_to_tensor(features)]


# ------------------------------------------------------------------------------------------------
# Distillation terms: objects the Distiller accepts (``Distiller(..., extra_terms=[...])``)


class DistillationTerm:
    """A loss term between a teacher's and a student's intermediate features.

    In the spirit of Keras 3's ``keras.distillation.FeatureDistillation``: a term names the layer
    pairs it taps, ``(teacher layer, student layer)``, and computes a per-example loss from
    their outputs; `apprentice_tf.distiller.Distiller` builds the taps once (multi-output views
    of the two networks), runs each network once per step, adds ``weight · per_example(...)`` to
    the student's loss and logs it under ``name``.

    Subclass it, implement `per_example`, extend `get_config` with your own settings, and
    register the class (``@keras.utils.register_keras_serializable()``); load a saved
    Distiller that uses it inside ``atf.quantize_scope(YourTerm)``.

    Args:
      pairs: ``(teacher layer name, student layer name)`` pairs, at least one.
      weight: finite weight >= 0 of the term in the student's loss.
      name: the metric the Distiller logs (weight · term); unique among a Distiller's terms.
    """

    def __init__(
        self, pairs: Sequence[Sequence[str]], weight: float = 1.0, name: str = "term"
    ) -> None:
        owner = type(self).__name__
        try:
            pairs = tuple((str(t), str(s)) for t, s in pairs)
        except (TypeError, ValueError):
            raise ValueError(
                f"{owner}: `pairs` must be (teacher layer, student layer) name pairs, received "
                f"{pairs!r}."
            ) from None
        if not pairs:
            raise ValueError(
                f"{owner}: `pairs` is empty; pass (teacher layer, student layer) pairs (for "
                "attention transfer, of equal spatial size: see match_stages)."
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"{owner}: `name` must be a non-empty string, received {name!r}.")
        self.pairs = pairs
        self.weight = _checks.real(owner, "weight", weight, 0)
        self.name = name

    def layers(self, side: int) -> tuple[str, ...]:
        """The teacher's (``side=0``) or the student's (``side=1``) layer names, pair order."""
        return tuple(pair[side] for pair in self.pairs)

    def per_example(
        self, teacher_features: list[tf.Tensor], student_features: list[tf.Tensor]
    ) -> tf.Tensor:
        """The unweighted term per example, shape (batch,); features in `pairs` order."""
        raise NotImplementedError(f"{type(self).__name__} must implement per_example().")

    def get_config(self) -> dict[str, Any]:
        return {
            "pairs": [list(pair) for pair in self.pairs],
            "weight": self.weight,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DistillationTerm:
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.pairs, self.weight, self.name))

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({settings})"


@keras.utils.register_keras_serializable(package="apprentice_tf")
class AttentionTransfer(DistillationTerm):
    """Attention transfer between stages of equal resolution (Zagoruyko & Komodakis, ICLR 2017).

    For each pair j, a = vec(mean_c F_c²) / ‖vec(mean_c F_c²)‖₂ is the attention map of the
    layer's activations F (`attention_map`: the normalised channel mean of squared
    activations), and the term is, per example,

        Σ_j d(a_T,j, a_S,j),   d = ‖a_T,j − a_S,j‖₂ (``form="norm"``)
                               or mean over positions of (a_T,j − a_S,j)² (``"squared_mean"``)

    summed over the pairs (`attention_transfer_loss` with β = 1); the Distiller multiplies it by
    ``weight`` (β). HAKD (Turner et al., arXiv:1810.10460) adds it to the distillation loss after
    Moonshine (Crowley et al., NeurIPS 2018), whose published β = 1000 goes with the authors'
    code's ``"squared_mean"`` distance. The teacher's maps are a stop-gradient target.

    Args:
      pairs: ``(teacher layer, student layer)`` names whose outputs have equal spatial shape
        (channel counts may differ), e.g. from `match_stages`.
      weight: β >= 0 (default 1000, Moonshine's).
      form: "norm" or "squared_mean", see above.
      name: the logged metric (default "attention").
    """

    def __init__(
        self,
        pairs: Sequence[Sequence[str]],
        weight: float = 1000.0,
        form: str = "norm",
        name: str = "attention",
    ) -> None:
        super().__init__(pairs, weight, name)
        self.form = _checks.choice("AttentionTransfer", "form", form, AT_FORMS)

    def per_example(
        self, teacher_features: list[tf.Tensor], student_features: list[tf.Tensor]
    ) -> tf.Tensor:
        """Σ_j d(a_T,j, a_S,j) per example, shape (batch,)."""
        return attention_transfer_loss(
            teacher_features, student_features, 1.0, form=self.form, reduction="none"
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "form": self.form}


def feature_layers(model: keras.Model) -> dict[tuple[int, int], str]:
    """{(height, width): name of the last layer, in model order, with a 4-D output of that size}.

    The last layer at a resolution is the output of that stage of the network (e.g. a ResNet
    stage's final ReLU, a MobileNet stage's last pointwise ReLU).
    """
    found: dict[tuple[int, int], str] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        shape = layer.output_shape
        if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[2]:
            found[(int(shape[1]), int(shape[2]))] = layer.name
    return found


def match_stages(teacher: keras.Model, student: keras.Model) -> list[tuple[str, str]]:
    """(teacher layer, student layer) at each resolution both networks have, largest first.

    The pairs `AttentionTransfer` needs: ``AttentionTransfer(match_stages(teacher, student))``.
    """
    ours, theirs = feature_layers(teacher), feature_layers(student)
    return [(ours[size], theirs[size]) for size in sorted(set(ours) & set(theirs), reverse=True)]
