"""apprentice_tf.losses against NumPy: values, gradients, reductions and bad inputs."""

import numpy as np
import pytest

from apprentice_tf import losses
from apprentice_tf.compat import tf

RNG = np.random.default_rng(0)
LABELS = np.array([0, 2, 1, 2, 0], dtype=np.int32)
TEACHER = (3.0 * RNG.normal(size=(5, 3))).astype(np.float32)
STUDENT = (2.0 * RNG.normal(size=(5, 3))).astype(np.float32)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_onehot(labels, classes=3):
    return np.eye(classes, dtype=np.float64)[labels]


def np_ce(labels, logits):
    """Per-example H(y, softmax(z)), float64."""
    return -(np_onehot(labels) * np_log_softmax(logits.astype(np.float64))).sum(-1)


def np_kd(teacher, student, tau):
    """Per-example τ²·H(softmax(z_T/τ), softmax(z_S/τ)), float64."""
    p_t = np_softmax(teacher.astype(np.float64) / tau)
    return -(tau**2) * (p_t * np_log_softmax(student.astype(np.float64) / tau)).sum(-1)


def test_cross_entropy_matches_numpy_for_sparse_column_and_one_hot_labels():
    expected = np_ce(LABELS, STUDENT).mean()
    sparse = losses.cross_entropy(LABELS, STUDENT)
    column = losses.cross_entropy(LABELS[:, None], STUDENT)
    one_hot = losses.cross_entropy(np_onehot(LABELS).astype(np.float32), STUDENT)
    for value in (sparse, column, one_hot):
        np.testing.assert_allclose(float(value), expected, rtol=1e-6)
    per_example = losses.cross_entropy(LABELS, STUDENT, reduction="none")
    np.testing.assert_allclose(per_example.numpy(), np_ce(LABELS, STUDENT), rtol=1e-5)


def test_cross_entropy_of_soft_targets():
    soft = np_softmax(TEACHER)
    expected = -(soft * np_log_softmax(STUDENT.astype(np.float64))).sum(-1).mean()
    value = losses.cross_entropy(soft.astype(np.float32), STUDENT)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0, 0.5])
def test_distillation_loss_is_tau_squared_cross_entropy(tau):
    value = losses.distillation_loss(TEACHER, STUDENT, temperature=tau)
    np.testing.assert_allclose(float(value), np_kd(TEACHER, STUDENT, tau).mean(), rtol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_distillation_gradient_reaches_student_only(tau):
    teacher = tf.Variable(TEACHER)
    student = tf.Variable(STUDENT)
    with tf.GradientTape(persistent=True) as tape:
        loss = losses.distillation_loss(teacher, student, temperature=tau)
    grad_teacher = tape.gradient(loss, teacher)
    assert grad_teacher is None or not np.any(grad_teacher.numpy())
    # d/dz_S of τ²·H(p_T(τ), softmax(z_S/τ)) = τ·(p_S(τ) − p_T(τ)), averaged over the batch.
    expected = tau * (np_softmax(STUDENT / tau) - np_softmax(TEACHER / tau)) / len(STUDENT)
    np.testing.assert_allclose(tape.gradient(loss, student).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    "alpha, beta, gamma, tau",
    [(1.0, 0.5, 0.5, 1.0), (0.0, 1.0, 0.0, 1.0), (0.3, 0.0, 2.0, 4.0), (2.0, 0.7, 0.1, 0.5)],
)
def test_apprentice_loss_matches_numpy(alpha, beta, gamma, tau):
    terms = losses.apprentice_loss(LABELS, TEACHER, STUDENT, alpha, beta, gamma, tau)
    teacher_ce = np_ce(LABELS, TEACHER).mean()
    student_ce = np_ce(LABELS, STUDENT).mean()
    distillation = np_kd(TEACHER, STUDENT, tau).mean()
    expected = {
        "teacher_ce": teacher_ce,
        "student_ce": student_ce,
        "distillation": distillation,
        "loss": alpha * teacher_ce + beta * student_ce + gamma * distillation,
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(float(terms[name]), value, rtol=1e-5, err_msg=name)


def test_apprentice_loss_gradients_split_between_teacher_and_student():
    """α·H(y, p_T) alone reaches the teacher; β and γ terms alone reach the student."""
    alpha, beta, gamma, tau = 1.0, 0.5, 0.5, 2.0
    teacher = tf.Variable(TEACHER)
    student = tf.Variable(STUDENT)
    with tf.GradientTape(persistent=True) as tape:
        loss = losses.apprentice_loss(LABELS, teacher, student, alpha, beta, gamma, tau)["loss"]
    n = len(LABELS)
    y = np_onehot(LABELS)
    expected_teacher = alpha * (np_softmax(TEACHER) - y) / n
    expected_student = (
        beta * (np_softmax(STUDENT) - y) / n
        + gamma * tau * (np_softmax(STUDENT / tau) - np_softmax(TEACHER / tau)) / n
    )
    np.testing.assert_allclose(tape.gradient(loss, teacher).numpy(), expected_teacher, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, student).numpy(), expected_student, atol=1e-6)


def test_global_batch_size_divides_the_sum():
    per_example = np_ce(LABELS, STUDENT)
    value = losses.cross_entropy(LABELS, STUDENT, global_batch_size=20)
    np.testing.assert_allclose(float(value), per_example.sum() / 20, rtol=1e-6)
    terms = losses.apprentice_loss(LABELS, TEACHER, STUDENT, reduction="none")
    assert all(t.shape == (5,) for t in terms.values())


def test_mixed_precision_logits_are_computed_in_float32():
    value = losses.distillation_loss(TEACHER.astype(np.float16), STUDENT.astype(np.float16))
    assert value.dtype == tf.float32
    expected = np_kd(TEACHER.astype(np.float16), STUDENT.astype(np.float16), 1.0).mean()
    np.testing.assert_allclose(float(value), expected, rtol=1e-4)


def np_attention(features):
    a = (features.astype(np.float64) ** 2).mean(-1).reshape(len(features), -1)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_attention_map_is_normalised_channel_mean_of_squares():
    features = RNG.normal(size=(2, 4, 3, 5)).astype(np.float32)
    a = losses.attention_map(features).numpy()
    assert a.shape == (2, 12)
    np.testing.assert_allclose(a, np_attention(features), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, rtol=1e-6)


def test_attention_transfer_loss_matches_numpy_over_stages():
    teacher = [RNG.normal(size=(3, 4, 4, 8)), RNG.normal(size=(3, 2, 2, 16))]
    student = [RNG.normal(size=(3, 4, 4, 2)), RNG.normal(size=(3, 2, 2, 4))]
    teacher = [t.astype(np.float32) for t in teacher]
    student = [s.astype(np.float32) for s in student]
    diffs = [np_attention(t) - np_attention(s) for t, s in zip(teacher, student, strict=True)]
    norm = sum(np.linalg.norm(d, axis=-1) for d in diffs).mean()
    squared = sum((d**2).mean(-1) for d in diffs).mean()
    value = losses.attention_transfer_loss(teacher, student)
    np.testing.assert_allclose(float(value), 1000.0 * norm, rtol=1e-5)
    value = losses.attention_transfer_loss(teacher, student, beta=3.0, form="squared_mean")
    np.testing.assert_allclose(float(value), 3.0 * squared, rtol=1e-5)
    single = losses.attention_transfer_loss(teacher[0], student[0], beta=1.0)
    np.testing.assert_allclose(float(single), np.linalg.norm(diffs[0], axis=-1).mean(), rtol=1e-5)


def test_attention_transfer_gradient_is_finite_at_zero_and_never_reaches_teacher():
    features = RNG.normal(size=(2, 3, 3, 4)).astype(np.float32)
    teacher = tf.Variable(features)
    student = tf.Variable(features[..., :2])  # a different map: half of the channels
    same = tf.Variable(features)
    with tf.GradientTape(persistent=True) as tape:
        loss = losses.attention_transfer_loss(teacher, student)
        zero = losses.attention_transfer_loss(tf.constant(features), same)
    assert float(zero) < 1e-6
    assert np.all(np.isfinite(tape.gradient(zero, same).numpy()))
    grad_teacher = tape.gradient(loss, teacher)
    assert grad_teacher is None or not np.any(grad_teacher.numpy())
    assert np.any(tape.gradient(loss, student).numpy())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: losses.distillation_loss(TEACHER, STUDENT, temperature=0.0), "temperature"),
        (lambda: losses.distillation_loss(TEACHER, STUDENT, temperature=-1), "temperature"),
        (lambda: losses.distillation_loss(TEACHER, STUDENT, float("nan")), "temperature"),
        (lambda: losses.distillation_loss(TEACHER, STUDENT, float("inf")), "temperature"),
        (lambda: losses.distillation_loss(TEACHER, STUDENT, "hot"), "temperature"),
        (lambda: losses.distillation_loss(TEACHER, STUDENT[:, :2]), "same shape"),
        (lambda: losses.cross_entropy(LABELS, STUDENT, reduction="sum"), "reduction"),
        (lambda: losses.cross_entropy(np.zeros((5, 4)), STUDENT), "labels"),
        (lambda: losses.cross_entropy(LABELS, LABELS), "floating"),
        (
            lambda: losses.attention_transfer_loss(np.ones((1, 4, 4, 2)), np.ones((1, 2, 2, 2))),
            "spatial shape",
        ),
        (
            lambda: losses.attention_transfer_loss(
                [np.ones((1, 4, 4, 2))] * 2, np.ones((1, 4, 4, 2))
            ),
            "number of stages",
        ),
        (
            lambda: losses.attention_transfer_loss(
                np.ones((1, 4, 4, 2)), np.ones((1, 4, 4, 2)), -1
            ),
            "beta",
        ),
        (
            lambda: losses.attention_transfer_loss(
                np.ones((1, 4, 4, 2)), np.ones((1, 4, 4, 2)), form="l1"
            ),
            "form",
        ),
        (lambda: losses.attention_map(np.ones((2, 3))), "spatial"),
    ],
)
def test_bad_inputs_raise_value_errors_that_say_what_was_received(call, match):
    with pytest.raises(ValueError, match=match):
        call()
