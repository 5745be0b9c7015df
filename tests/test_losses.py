"""Tests for kdrun.losses: reference agreement, golden values, properties, gradients,
numerical stability, argument checks and device/dtype handling.

Golden values were computed once, independently of kdrun and of torch, with Python's ``math``
module in float64 (log-sum-exp and ``math.fsum``) from the formulas in the kdrun notebook.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.distributions import Independent, Normal
from torch.distributions import kl_divergence as torch_kl

import kdrun
from kdrun.losses import (
    DistillationLossTerms,
    KDLoss,
    soft_target_loss,
    soft_targets,
    distillation_loss,
    distillation_loss_terms,
    kl_divergence_discrete,
    kl_divergence_gaussian,
    kl_divergence_gaussian_diagonal,
)

INF = float("inf")
NAN = float("nan")
TEMPERATURES = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0]
HYPOTHESIS = settings(max_examples=50, deadline=None)

# The notebook's test tensors.
NB_P_LOGITS = [[2.0, 1.0, 0.1], [1.0, 2.0, 0.5]]
NB_Q_LOGITS = [[1.8, 1.1, 0.2], [0.9, 2.1, 0.6]]
NB_MU_P, NB_SIGMA_P = [0.0, 1.0, -0.5], [1.0, 1.5, 0.8]
NB_MU_Q, NB_SIGMA_Q = [0.1, 1.2, -0.4], [1.1, 1.4, 0.9]

# Golden values (float64, computed by hand as described in the module docstring).
GOLDEN_KL_T1_ROWS = [0.010405131438773998, 0.0034272725926451954]
GOLDEN_KL_T1 = 0.0069162020157096  # batchmean, T = 1
GOLDEN_KL_T3 = 0.00084988280933885  # batchmean, T = 3
GOLDEN_GAUSS_ROWS = [0.012665551705151268, 0.015190801982436275, 0.019017603557618057]
GOLDEN_GAUSS_MEAN = 0.015624652415068533
GOLDEN_GAUSS_SUM = 0.0468739572452056
# distillation on the notebook tensors: teacher = NB_P_LOGITS, student = NB_Q_LOGITS,
# labels = [0, 1], alpha = 0.7, T = 3.
GOLDEN_DISTILL_SOFT = 0.007648945284049666  # T^2 * KL(teacher_T || student_T)
GOLDEN_DISTILL_HARD = 0.4756430416134887  # CE(student, labels)
GOLDEN_DISTILL_TOTAL = 0.1480471741828814  # 0.7 * soft + 0.3 * hard


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """All tensors here are tiny; intra-op threads only add contention (3-4x slower suite on a
    loaded 2-core machine). Restored afterwards so other test modules are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def t(data, dtype=torch.float32, **kw) -> torch.Tensor:
    return torch.tensor(data, dtype=dtype, **kw)


def ref_kl_div(p_logits, q_logits, temperature=1.0, reduction="batchmean"):
    """PyTorch's reference KL(P || Q), computed in float64."""
    log_p = F.log_softmax(p_logits.double() / temperature, dim=-1)
    log_q = F.log_softmax(q_logits.double() / temperature, dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction=reduction)


def gaussian_closed_form64(mu_p, sigma_p, mu_q, sigma_q):
    """The notebook's formula, elementwise, in float64."""
    mu_p, sigma_p, mu_q, sigma_q = (x.double() for x in (mu_p, sigma_p, mu_q, sigma_q))
    return torch.log(sigma_q / sigma_p) + (sigma_p**2 + (mu_p - mu_q) ** 2) / (2 * sigma_q**2) - 0.5


def logits_pair(min_value=-20.0, max_value=20.0, max_rank=3):
    """Two float64 numpy arrays of one shape [..., classes], classes >= 2."""
    shapes = hnp.array_shapes(min_dims=1, max_dims=max_rank - 1, min_side=1, max_side=4).flatmap(
        lambda lead: st.integers(2, 6).map(lambda c: (*lead, c))
    )
    elements = st.floats(min_value, max_value, allow_nan=False, allow_infinity=False)
    return shapes.flatmap(
        lambda shape: st.tuples(
            hnp.arrays(np.float64, shape, elements=elements), hnp.arrays(np.float64, shape, elements=elements)
        )
    )


def rand(*shape, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# =========================================================================== 1. references


class TestDiscreteAgainstReference:
    @pytest.mark.parametrize("temperature", TEMPERATURES)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_batchmean_matches_f_kl_div(self, temperature, dtype):
        p, q = rand(8, 10, seed=1, dtype=dtype, scale=3), rand(8, 10, seed=2, dtype=dtype, scale=3)
        got = kl_divergence_discrete(p, q, temperature=temperature)
        log_p = F.log_softmax(p / temperature, dim=-1)
        log_q = F.log_softmax(q / temperature, dim=-1)
        expected = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
        assert got.shape == ()
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got.double(), ref_kl_div(p, q, temperature), atol=1e-6, rtol=1e-6)

    def test_default_is_batchmean_and_temperature_one(self):
        p, q = rand(5, 7, seed=3), rand(5, 7, seed=4)
        assert kl_divergence_discrete(p, q) == kl_divergence_discrete(p, q, 1.0, "batchmean")
        torch.testing.assert_close(kl_divergence_discrete(p, q).double(), ref_kl_div(p, q), atol=1e-6, rtol=1e-6)

    @pytest.mark.parametrize("temperature", [0.5, 2.0, 5.0])
    def test_sum_matches_f_kl_div(self, temperature):
        p, q = rand(6, 9, seed=5, scale=2), rand(6, 9, seed=6, scale=2)
        got = kl_divergence_discrete(p, q, temperature, reduction="sum")
        torch.testing.assert_close(got.double(), ref_kl_div(p, q, temperature, "sum"), atol=1e-6, rtol=1e-6)

    @pytest.mark.parametrize("temperature", [0.5, 2.0, 5.0])
    def test_none_is_per_row_sum_of_f_kl_div(self, temperature):
        p, q = rand(6, 9, seed=7, scale=2), rand(6, 9, seed=8, scale=2)
        got = kl_divergence_discrete(p, q, temperature, reduction="none")
        assert got.shape == (6,)
        expected = ref_kl_div(p, q, temperature, "none").sum(dim=-1)
        torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)

    @pytest.mark.parametrize("temperature", [1.0, 3.0])
    def test_3d_batchmean_is_mean_over_all_leading_positions(self, temperature):
        batch, seq, classes = 3, 4, 6
        p, q = rand(batch, seq, classes, seed=9, scale=2), rand(batch, seq, classes, seed=10, scale=2)
        got = kl_divergence_discrete(p, q, temperature)
        total = ref_kl_div(p, q, temperature, "sum")
        # mean over the batch*seq positions (F.kl_div's own batchmean would divide by batch only)
        torch.testing.assert_close(got.double(), total / (batch * seq), atol=1e-6, rtol=1e-6)
        flat = ref_kl_div(p.reshape(-1, classes), q.reshape(-1, classes), temperature)
        torch.testing.assert_close(got.double(), flat, atol=1e-6, rtol=1e-6)
        assert not torch.isclose(got.double(), total / batch)  # not F.kl_div's 3-D batchmean

        none = kl_divergence_discrete(p, q, temperature, "none")
        assert none.shape == (batch, seq)
        torch.testing.assert_close(
            none.double(), ref_kl_div(p, q, temperature, "none").sum(-1), atol=1e-6, rtol=1e-6
        )
        torch.testing.assert_close(
            kl_divergence_discrete(p, q, temperature, "sum").double(), total, atol=1e-6, rtol=1e-6
        )

    def test_1d_input_is_one_position(self):
        p, q = rand(5, seed=11), rand(5, seed=12)
        got = kl_divergence_discrete(p, q, 2.0)
        assert got.shape == ()
        torch.testing.assert_close(got.double(), ref_kl_div(p[None], q[None], 2.0), atol=1e-6, rtol=1e-6)
        assert kl_divergence_discrete(p, q, 2.0, "none").shape == ()


class TestGaussianAgainstReference:
    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_matches_torch_distributions(self, reduction, dtype):
        mu_p, mu_q = rand(4, 5, seed=20, dtype=dtype, scale=2), rand(4, 5, seed=21, dtype=dtype, scale=2)
        sigma_p = rand(4, 5, seed=22, dtype=dtype).exp()
        sigma_q = rand(4, 5, seed=23, dtype=dtype).exp()
        got = kl_divergence_gaussian(mu_p, sigma_p, mu_q, sigma_q, reduction=reduction)
        expected = torch_kl(Normal(mu_p, sigma_p), Normal(mu_q, sigma_q))
        expected = {"mean": expected.mean(), "sum": expected.sum(), "none": expected}[reduction]
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_broadcasting_matches_torch_distributions(self, reduction):
        mu_p = rand(4, 1, seed=24)  # [4, 1]
        sigma_p = rand(1, 3, seed=25).exp()  # [1, 3]
        mu_q = rand(3, seed=26)  # [3]
        sigma_q = t(1.7)  # []
        got = kl_divergence_gaussian(mu_p, sigma_p, mu_q, sigma_q, reduction=reduction)
        expected = torch_kl(Normal(mu_p, sigma_p), Normal(mu_q, sigma_q))
        assert expected.shape == (4, 3)
        expected = {"mean": expected.mean(), "sum": expected.sum(), "none": expected}[reduction]
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)

    def test_default_reduction_is_mean(self):
        args = (rand(6, seed=27), rand(6, seed=28).exp(), rand(6, seed=29), rand(6, seed=30).exp())
        assert kl_divergence_gaussian(*args) == kl_divergence_gaussian(*args, reduction="mean")
        assert kl_divergence_gaussian_diagonal(*args) == kl_divergence_gaussian_diagonal(*args, reduction="mean")

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_diagonal_matches_independent_normal(self, reduction, dtype):
        mu_p, mu_q = rand(5, 7, seed=31, dtype=dtype), rand(5, 7, seed=32, dtype=dtype)
        sigma_p, sigma_q = rand(5, 7, seed=33, dtype=dtype).exp(), rand(5, 7, seed=34, dtype=dtype).exp()
        got = kl_divergence_gaussian_diagonal(mu_p, sigma_p, mu_q, sigma_q, reduction=reduction)
        expected = torch_kl(Independent(Normal(mu_p, sigma_p), 1), Independent(Normal(mu_q, sigma_q), 1))
        assert expected.shape == (5,)
        expected = {"mean": expected.mean(), "sum": expected.sum(), "none": expected}[reduction]
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)

    def test_diagonal_broadcasting_and_3d(self):
        mu_p = rand(2, 3, 4, seed=35)
        sigma_p = rand(4, seed=36).exp()  # shared over leading positions
        mu_q = torch.zeros(1)
        sigma_q = torch.ones(1)  # standard normal prior, VAE style
        got = kl_divergence_gaussian_diagonal(mu_p, sigma_p, mu_q, sigma_q, reduction="none")
        mu_p_, sigma_p_, mu_q_, sigma_q_ = torch.broadcast_tensors(mu_p, sigma_p, mu_q, sigma_q)
        expected = torch_kl(Independent(Normal(mu_p_, sigma_p_), 1), Independent(Normal(mu_q_, sigma_q_), 1))
        assert got.shape == (2, 3)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(
            kl_divergence_gaussian_diagonal(mu_p, sigma_p, mu_q, sigma_q), expected.mean(), atol=1e-6, rtol=1e-5
        )


class TestGoldenValues:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_notebook_discrete_kl(self, dtype):
        p, q = t(NB_P_LOGITS, dtype), t(NB_Q_LOGITS, dtype)
        tol = 1e-12 if dtype == torch.float64 else 1e-7
        assert kl_divergence_discrete(p, q, 1.0).item() == pytest.approx(GOLDEN_KL_T1, rel=1e-9, abs=tol)
        assert kl_divergence_discrete(p, q, 3.0).item() == pytest.approx(GOLDEN_KL_T3, rel=1e-9, abs=tol)
        rows = kl_divergence_discrete(p, q, 1.0, reduction="none").tolist()
        assert rows == pytest.approx(GOLDEN_KL_T1_ROWS, rel=1e-9, abs=tol)
        assert kl_divergence_discrete(p, q, 1.0, reduction="sum").item() == pytest.approx(
            sum(GOLDEN_KL_T1_ROWS), rel=1e-9, abs=tol
        )

    def test_notebook_discrete_kl_equals_notebook_reference(self):
        # the notebook's own assertion (atol=1e-6, rtol=1e-5), and its "higher T reduces KL" note
        p, q = t(NB_P_LOGITS), t(NB_Q_LOGITS)
        for temperature in (1.0, 3.0):
            log_p = F.log_softmax(p / temperature, dim=-1)
            log_q = F.log_softmax(q / temperature, dim=-1)
            kl_pytorch = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
            assert torch.allclose(kl_divergence_discrete(p, q, temperature), kl_pytorch, atol=1e-6, rtol=1e-5)
        assert kl_divergence_discrete(p, q, 3.0) < kl_divergence_discrete(p, q, 1.0)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_notebook_gaussian_kl(self, dtype):
        args = (t(NB_MU_P, dtype), t(NB_SIGMA_P, dtype), t(NB_MU_Q, dtype), t(NB_SIGMA_Q, dtype))
        tol = 1e-12 if dtype == torch.float64 else 1e-7
        assert kl_divergence_gaussian(*args).item() == pytest.approx(GOLDEN_GAUSS_MEAN, rel=1e-9, abs=tol)
        assert kl_divergence_gaussian(*args, reduction="sum").item() == pytest.approx(
            GOLDEN_GAUSS_SUM, rel=1e-9, abs=tol
        )
        assert kl_divergence_gaussian(*args, reduction="none").tolist() == pytest.approx(
            GOLDEN_GAUSS_ROWS, rel=1e-9, abs=tol
        )
        # the same three numbers as one 3-dimensional diagonal Gaussian
        assert kl_divergence_gaussian_diagonal(*args).item() == pytest.approx(GOLDEN_GAUSS_SUM, rel=1e-9, abs=tol)

    def test_notebook_gaussian_identical_is_zero(self):
        mu, sigma = t(NB_MU_P), t(NB_SIGMA_P)
        assert kl_divergence_gaussian(mu, sigma, mu, sigma).item() == 0.0

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_notebook_distillation_loss(self, dtype):
        student, teacher, labels = t(NB_Q_LOGITS, dtype), t(NB_P_LOGITS, dtype), torch.tensor([0, 1])
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        total = distillation_loss(student, teacher, labels, alpha=0.7, temperature=3.0)
        assert total.item() == pytest.approx(GOLDEN_DISTILL_TOTAL, rel=1e-9, abs=tol)
        terms = distillation_loss_terms(student, teacher, labels, alpha=0.7, temperature=3.0)
        assert isinstance(terms, DistillationLossTerms)
        assert terms.total.item() == pytest.approx(GOLDEN_DISTILL_TOTAL, rel=1e-9, abs=tol)
        assert terms.soft.item() == pytest.approx(GOLDEN_DISTILL_SOFT, rel=1e-9, abs=tol)
        assert terms.hard.item() == pytest.approx(GOLDEN_DISTILL_HARD, rel=1e-9, abs=tol)
        # defaults are the notebook's alpha = 0.7, T = 3
        assert distillation_loss(student, teacher, labels).item() == total.item()

    def test_alpha_weights_the_soft_term(self):
        # alpha = 1: only the teacher term; alpha = 0: only cross-entropy (opposite of torchdistill)
        student, teacher, labels = t(NB_Q_LOGITS), t(NB_P_LOGITS), torch.tensor([0, 1])
        only_soft = distillation_loss(student, teacher, labels, alpha=1.0, temperature=3.0)
        only_hard = distillation_loss(student, teacher, labels, alpha=0.0, temperature=3.0)
        assert only_soft.item() == pytest.approx(GOLDEN_DISTILL_SOFT, abs=1e-6)
        assert only_hard.item() == pytest.approx(GOLDEN_DISTILL_HARD, abs=1e-6)


class TestDistillationComposition:
    @HYPOTHESIS
    @given(
        pair=logits_pair(-10, 10),
        alpha=st.floats(0.0, 1.0),
        temperature=st.floats(0.5, 10.0),
        data=st.data(),
    )
    def test_total_is_alpha_soft_plus_one_minus_alpha_hard(self, pair, alpha, temperature, data):
        student, teacher = (torch.from_numpy(a) for a in pair)
        num_classes = student.shape[-1]
        labels = torch.from_numpy(
            data.draw(hnp.arrays(np.int64, student.shape[:-1], elements=st.integers(0, num_classes - 1)))
        )
        terms = distillation_loss_terms(student, teacher, labels, alpha=alpha, temperature=temperature)
        soft = temperature**2 * kl_divergence_discrete(teacher, student, temperature)
        hard = F.cross_entropy(student.reshape(-1, num_classes), labels.reshape(-1))
        torch.testing.assert_close(terms.soft, soft, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(terms.hard, hard, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(terms.total, alpha * soft + (1 - alpha) * hard, atol=1e-12, rtol=1e-12)
        assert distillation_loss(student, teacher, labels, alpha, temperature).item() == terms.total.item()

    @pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8])
    def test_any_integer_label_dtype(self, label_dtype):
        student, teacher = rand(4, 5, seed=40), rand(4, 5, seed=41)
        labels = torch.tensor([0, 4, 2, 1])
        expected = distillation_loss(student, teacher, labels)
        got = distillation_loss(student, teacher, labels.to(label_dtype))
        assert got.item() == expected.item()

    def test_3d_sequence_input(self):
        student, teacher = rand(2, 3, 5, seed=42), rand(2, 3, 5, seed=43)
        labels = torch.tensor([[0, 1, 2], [3, 4, 0]])
        terms = distillation_loss_terms(student, teacher, labels, alpha=0.4, temperature=2.0)
        soft = 4.0 * ref_kl_div(teacher.reshape(-1, 5), student.reshape(-1, 5), 2.0)
        hard = F.cross_entropy(student.double().reshape(-1, 5), labels.reshape(-1))
        torch.testing.assert_close(terms.soft.double(), soft, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(terms.hard.double(), hard, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(terms.total.double(), 0.4 * soft + 0.6 * hard, atol=1e-6, rtol=1e-6)


class TestKDLossModule:
    """KDLoss (what loss=kd builds) and the precomputed soft targets the training loop uses."""

    def test_golden_values_on_the_notebook_tensors(self):
        student, teacher = torch.tensor(NB_Q_LOGITS, dtype=torch.float64), torch.tensor(NB_P_LOGITS, dtype=torch.float64)
        parts = KDLoss(0.7, 3.0)(student, teacher, torch.tensor([0, 1]))
        assert parts["soft_loss"].item() == pytest.approx(GOLDEN_DISTILL_SOFT, rel=1e-12)
        assert parts["hard_loss"].item() == pytest.approx(GOLDEN_DISTILL_HARD, rel=1e-12)
        assert parts["loss"].item() == pytest.approx(GOLDEN_DISTILL_TOTAL, rel=1e-12)

    @HYPOTHESIS
    @given(pair=logits_pair(-10, 10), alpha=st.floats(0.0, 1.0), temperature=st.floats(0.5, 10.0), rows=st.data())
    def test_precomputed_targets_and_row_selections_give_the_loss_of_the_logits(self, pair, alpha, temperature, rows):
        student, teacher = (torch.from_numpy(a).reshape(-1, a.shape[-1]) for a in pair)
        labels = torch.arange(len(student)) % student.shape[-1]
        loss = KDLoss(alpha, temperature)
        index = torch.tensor(rows.draw(st.lists(st.integers(0, len(student) - 1), min_size=1, max_size=len(student))))
        targets = loss.teacher_targets(teacher)  # once for every row, as the loop does
        batch = type(targets)(*(t[index] if t is not None else None for t in targets))
        got = loss(student[index], batch, labels[index])
        expected = distillation_loss_terms(student[index], teacher[index], labels[index], alpha=alpha, temperature=temperature)
        torch.testing.assert_close(got["loss"], expected.total, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(got["soft_loss"], expected.soft, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(got["hard_loss"], expected.hard, atol=1e-10, rtol=1e-10)

    def test_alpha_zero_is_the_hard_term_exactly_and_alpha_one_without_labels_the_soft_term(self):
        student, teacher = rand(6, 4, seed=50).requires_grad_(), rand(6, 4, seed=51)
        labels = torch.tensor([0, 1, 2, 3, 0, 1])
        hard = KDLoss(0.0, 3.0)(student, teacher, labels)
        assert hard["loss"] is hard["hard_loss"]  # the same graph as plain cross-entropy
        soft_only = KDLoss(1.0, 2.0)(student, teacher, None)
        assert set(soft_only) == {"loss", "soft_loss"} and soft_only["loss"] is soft_only["soft_loss"]
        torch.testing.assert_close(soft_only["loss"], 4.0 * kl_divergence_discrete(teacher, student, 2.0))

    def test_masked_teacher_classes_contribute_nothing(self):
        teacher = torch.tensor([[2.0, -INF, 0.5], [0.0, 1.0, -INF]])
        student = rand(2, 3, seed=52)
        targets = soft_targets(teacher, 2.0)
        assert targets.support is not None and bool(torch.isfinite(targets.log_probs).all())
        torch.testing.assert_close(soft_target_loss(student, targets, 2.0), 4.0 * kl_divergence_discrete(teacher, student, 2.0))

    @pytest.mark.parametrize("alpha, temperature, bad", [(1.5, 3.0, "alpha"), (0.5, 0.0, "temperature"), (0.5, NAN, "temperature")])
    def test_bad_settings_raise_value_error_naming_them(self, alpha, temperature, bad):
        with pytest.raises(ValueError, match=bad):
            KDLoss(alpha, temperature)


# =========================================================================== 2. properties


class TestDiscreteProperties:
    @HYPOTHESIS
    @given(pair=logits_pair(), temperature=st.floats(0.1, 100.0), dtype=st.sampled_from([torch.float32, torch.float64]))
    def test_nonnegative(self, pair, temperature, dtype):
        p, q = (torch.from_numpy(a).to(dtype) for a in pair)
        kl = kl_divergence_discrete(p, q, temperature, reduction="none")
        assert torch.isfinite(kl).all()
        assert (kl >= -1e-6).all(), kl.min()

    @HYPOTHESIS
    @given(pair=logits_pair(), temperature=st.floats(0.1, 100.0), dtype=st.sampled_from([torch.float32, torch.float64]))
    def test_zero_for_identical_inputs(self, pair, temperature, dtype):
        p = torch.from_numpy(pair[0]).to(dtype)
        kl = kl_divergence_discrete(p, p.clone(), temperature, reduction="none")
        assert (kl.abs() <= 1e-7).all()
        # and translation invariance of softmax: shifted logits are the same distribution
        kl_shift = kl_divergence_discrete(p, p + 3.0, temperature, reduction="none")
        assert (kl_shift.abs() <= 1e-5).all()

    def test_not_symmetric_concrete(self):
        p, q = t([[3.0, 0.0, 0.0]], torch.float64), t([[0.0, 0.0, 0.0]], torch.float64)
        # by hand: P = (e^3, 1, 1) / (e^3 + 2), Q uniform
        z = math.exp(3.0) + 2.0
        P = [math.exp(3.0) / z, 1 / z, 1 / z]
        kl_pq = sum(pi * math.log(pi / (1 / 3)) for pi in P)
        kl_qp = sum((1 / 3) * math.log((1 / 3) / pi) for pi in P)
        assert kl_divergence_discrete(p, q).item() == pytest.approx(kl_pq, rel=1e-12)
        assert kl_divergence_discrete(q, p).item() == pytest.approx(kl_qp, rel=1e-12)
        assert abs(kl_pq - kl_qp) > 0.1  # 0.5742 vs 0.7671
        # the notebook tensors are asymmetric too
        a, b = t(NB_P_LOGITS), t(NB_Q_LOGITS)
        assert kl_divergence_discrete(a, b).item() != pytest.approx(kl_divergence_discrete(b, a).item(), rel=1e-3)

    @HYPOTHESIS
    @given(pair=logits_pair(-10, 10), temperature=st.floats(0.5, 10.0))
    def test_each_direction_matches_its_own_reference(self, pair, temperature):
        # a symmetrised implementation (e.g. (KL(P||Q) + KL(Q||P)) / 2) fails this wherever the
        # two directions differ; the concrete test above shows they do differ.
        p, q = (torch.from_numpy(a) for a in pair)
        for a, b in ((p, q), (q, p)):
            got = kl_divergence_discrete(a, b, temperature, reduction="none")
            expected = ref_kl_div(a, b, temperature, "none").sum(-1)
            torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)

    @HYPOTHESIS
    @given(pair=logits_pair(-1.0, 1.0), dtype=st.sampled_from([torch.float32, torch.float64]))
    def test_falls_towards_zero_as_temperature_grows(self, pair, dtype):
        # For |logits| <= T (the high-temperature regime) KL(P_T || Q_T) ~ Var(z_p - z_q) / (2 T^2)
        # is non-increasing in T. (For sharper logits it is not: see the next test.)
        p, q = (torch.from_numpy(a).to(dtype) for a in pair)
        temps = [2.0**k for k in range(13)]  # 1 .. 4096
        kls = [kl_divergence_discrete(p, q, T, reduction="none").double() for T in temps]
        atol = 1e-12 if dtype == torch.float64 else 1e-6
        for lower_t, higher_t in zip(kls, kls[1:]):
            assert (higher_t <= lower_t + atol).all()
        very_high = kl_divergence_discrete(p, q, 1e3, reduction="none").double()
        assert (very_high <= 1e-3 * kls[0] + atol).all()

    def test_not_monotone_in_temperature_for_sharp_logits(self):
        # Both distributions are nearly one-hot at T = 1, so KL grows before it falls.
        p, q = t([[10.0, 0.0]], torch.float64), t([[20.0, 0.0]], torch.float64)
        kl = [kl_divergence_discrete(p, q, T).item() for T in (1.0, 4.0, 1e3)]
        assert kl[0] < kl[1] and kl[2] < kl[0]


def _as_dtype(value: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([value], dtype=dtype)


class TestGaussianProperties:
    @HYPOTHESIS
    @given(
        mu=hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-1e3, 1e3)),
        log_sigma=st.floats(-7.0, 7.0),
        dtype=st.sampled_from([torch.float32, torch.float64]),
    )
    def test_exactly_zero_when_parameters_equal(self, mu, log_sigma, dtype):
        mu = torch.from_numpy(mu).to(dtype)
        sigma = torch.full_like(mu, math.exp(log_sigma)) * torch.linspace(0.5, 2.0, mu.numel(), dtype=dtype)
        kl = kl_divergence_gaussian(mu, sigma, mu.clone(), sigma.clone(), reduction="none")
        assert (kl == 0.0).all(), kl
        assert kl_divergence_gaussian(mu, sigma, mu, sigma).item() == 0.0
        assert kl_divergence_gaussian_diagonal(mu, sigma, mu, sigma).item() == 0.0

    @HYPOTHESIS
    @given(
        mu_p=st.floats(-10.0, 10.0),
        log_sigma_p=st.floats(-4.0, 4.0),
        d_mu=st.one_of(st.just(0.0), st.floats(1e-3, 10.0), st.floats(-10.0, -1e-3)),
        d_log_sigma=st.one_of(st.just(0.0), st.floats(1e-3, 3.0), st.floats(-3.0, -1e-3)),
        dtype=st.sampled_from([torch.float32, torch.float64]),
    )
    def test_positive_when_parameters_differ(self, mu_p, log_sigma_p, d_mu, d_log_sigma, dtype):
        # differences of at least 1e-3 (relative to sigma_q, or in log sigma): big enough to be
        # resolved in float32. (Arbitrarily small differences underflow in any precision.)
        assume(d_mu != 0.0 or d_log_sigma != 0.0)
        sigma_p = math.exp(log_sigma_p)
        sigma_q = sigma_p * math.exp(d_log_sigma)
        mu_q = mu_p + d_mu * sigma_q
        kl = kl_divergence_gaussian(*(_as_dtype(v, dtype) for v in (mu_p, sigma_p, mu_q, sigma_q)))
        assert kl.item() > 0.0
        assert math.isfinite(kl.item())


# =========================================================================== 3. gradients


class TestGradients:
    @pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
    @pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
    def test_gradcheck_discrete(self, reduction, temperature):
        p = rand(3, 5, seed=50, dtype=torch.float64, scale=2).requires_grad_()
        q = rand(3, 5, seed=51, dtype=torch.float64, scale=2).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: kl_divergence_discrete(a, b, temperature, reduction), (p, q))

    def test_gradcheck_discrete_3d(self):
        p = rand(2, 3, 4, seed=52, dtype=torch.float64).requires_grad_()
        q = rand(2, 3, 4, seed=53, dtype=torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: kl_divergence_discrete(a, b, 2.0), (p, q))

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_gradcheck_gaussian(self, reduction):
        mu_p = rand(4, 3, seed=54, dtype=torch.float64).requires_grad_()
        sigma_p = (rand(4, 3, seed=55, dtype=torch.float64) * 0.5).exp().requires_grad_()
        mu_q = rand(4, 3, seed=56, dtype=torch.float64).requires_grad_()
        sigma_q = (rand(4, 3, seed=57, dtype=torch.float64) * 0.5).exp().requires_grad_()
        fn = lambda *a: kl_divergence_gaussian(*a, reduction=reduction)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (mu_p, sigma_p, mu_q, sigma_q))

    def test_gradcheck_gaussian_broadcasting(self):
        mu_p = rand(4, 1, seed=58, dtype=torch.float64).requires_grad_()
        sigma_p = (rand(1, 3, seed=59, dtype=torch.float64) * 0.5).exp().requires_grad_()
        mu_q = rand(3, seed=60, dtype=torch.float64).requires_grad_()
        sigma_q = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(kl_divergence_gaussian, (mu_p, sigma_p, mu_q, sigma_q))

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_gradcheck_gaussian_diagonal(self, reduction):
        mu_p = rand(3, 4, seed=61, dtype=torch.float64).requires_grad_()
        sigma_p = (rand(3, 4, seed=62, dtype=torch.float64) * 0.5).exp().requires_grad_()
        mu_q = rand(3, 4, seed=63, dtype=torch.float64).requires_grad_()
        sigma_q = (rand(3, 4, seed=64, dtype=torch.float64) * 0.5).exp().requires_grad_()
        fn = lambda *a: kl_divergence_gaussian_diagonal(*a, reduction=reduction)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (mu_p, sigma_p, mu_q, sigma_q))

    @pytest.mark.parametrize("alpha, temperature", [(0.7, 3.0), (0.0, 1.0), (1.0, 5.0), (0.3, 0.5)])
    def test_gradcheck_distillation_loss(self, alpha, temperature):
        student = rand(4, 5, seed=65, dtype=torch.float64, scale=2).requires_grad_()
        teacher = rand(4, 5, seed=66, dtype=torch.float64, scale=2)
        labels = torch.tensor([0, 3, 4, 1])
        fn = lambda s: distillation_loss(s, teacher, labels, alpha, temperature)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (student,))
        terms_fn = lambda s: tuple(distillation_loss_terms(s, teacher, labels, alpha, temperature))  # noqa: E731
        assert torch.autograd.gradcheck(terms_fn, (student,))

    def test_gradcheck_distillation_loss_3d(self):
        student = rand(2, 3, 4, seed=67, dtype=torch.float64).requires_grad_()
        teacher = rand(2, 3, 4, seed=68, dtype=torch.float64)
        labels = torch.tensor([[0, 1, 2], [3, 0, 1]])
        assert torch.autograd.gradcheck(lambda s: distillation_loss(s, teacher, labels), (student,))

    @staticmethod
    def _grad_norm(loss_fn, student):
        student = student.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn(student), student)
        return grad, grad.norm().item()

    def test_t_squared_keeps_soft_gradient_magnitude_constant(self):
        student = rand(8, 10, seed=69, dtype=torch.float64, scale=0.5)
        teacher = rand(8, 10, seed=70, dtype=torch.float64, scale=0.5)
        labels = torch.zeros(8, dtype=torch.long)
        temps = [4.0, 16.0, 64.0]
        soft_norms, kl_norms = [], []
        for T in temps:
            soft_grad, soft_norm = self._grad_norm(
                lambda s: distillation_loss_terms(s, teacher, labels, 0.7, T).soft, student
            )
            kl_grad, kl_norm = self._grad_norm(lambda s: kl_divergence_discrete(teacher, s, T), student)
            torch.testing.assert_close(soft_grad, T**2 * kl_grad)
            soft_norms.append(soft_norm)
            kl_norms.append(kl_norm)
        # with T^2: roughly constant
        assert max(soft_norms) / min(soft_norms) < 1.5, soft_norms
        # without T^2: shrinks like 1 / T^2 (a factor 16 per step of 4 in T)
        for lower, higher in zip(kl_norms, kl_norms[1:]):
            assert 16 / 1.5 < lower / higher < 16 * 1.5, kl_norms
        # and the limit: d(T^2 KL)/dz_s -> (d - mean(d)) / (classes * batch), d = z_s - z_t
        d = student - teacher
        limit = (d - d.mean(-1, keepdim=True)) / (10 * 8)
        soft_grad_64, _ = self._grad_norm(lambda s: distillation_loss_terms(s, teacher, labels, 0.7, 64.0).soft, student)
        torch.testing.assert_close(soft_grad_64, limit, rtol=0.05, atol=1e-4)

    @pytest.mark.parametrize("fn", ["distillation_loss", "distillation_loss_terms"])
    def test_no_gradient_into_teacher(self, fn):
        student = rand(4, 5, seed=71).requires_grad_()
        teacher = rand(4, 5, seed=72).requires_grad_()
        labels = torch.tensor([0, 1, 2, 3])
        if fn == "distillation_loss":
            loss = distillation_loss(student, teacher, labels)
        else:
            terms = distillation_loss_terms(student, teacher, labels)
            loss = terms.total + terms.soft + terms.hard
        loss.backward()
        assert teacher.grad is None
        assert student.grad is not None and student.grad.abs().sum() > 0

    def test_kl_discrete_itself_does_propagate_into_p(self):
        # the detach is specific to distillation: the plain divergence differentiates both sides
        p, q = rand(3, 4, seed=73).requires_grad_(), rand(3, 4, seed=74).requires_grad_()
        kl_divergence_discrete(p, q).backward()
        assert p.grad is not None and p.grad.abs().sum() > 0


# =========================================================================== 4. stability

LOW_PRECISION = [torch.float32, torch.float16, torch.bfloat16]


def _finite_grads(*tensors):
    for x in tensors:
        assert x.grad is not None
        assert torch.isfinite(x.grad).all(), x.grad


class TestStability:
    @pytest.mark.parametrize("dtype", LOW_PRECISION)
    @pytest.mark.parametrize("temperature", [1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3])
    @pytest.mark.parametrize("magnitude", [1.0, 1e2, 1e4])
    def test_large_logits_and_extreme_temperatures(self, dtype, temperature, magnitude):
        g = torch.Generator().manual_seed(80)
        p = ((torch.rand(4, 6, generator=g) * 2 - 1) * magnitude).to(dtype).requires_grad_()
        q = ((torch.rand(4, 6, generator=g) * 2 - 1) * magnitude).to(dtype).requires_grad_()
        kl = kl_divergence_discrete(p, q, temperature)
        assert kl.dtype == torch.float32
        assert torch.isfinite(kl)
        # agrees with a float64 computation on the same (rounded) inputs
        expected = ref_kl_div(p.detach(), q.detach(), temperature)
        torch.testing.assert_close(kl.double(), expected, rtol=1e-5, atol=1e-6)
        kl.backward()
        _finite_grads(p, q)

    @pytest.mark.parametrize("dtype", LOW_PRECISION)
    @pytest.mark.parametrize("temperature", [1e-2, 1.0, 1e3])
    def test_distillation_loss_large_logits(self, dtype, temperature):
        g = torch.Generator().manual_seed(81)
        student = ((torch.rand(4, 6, generator=g) * 2 - 1) * 1e4).to(dtype).requires_grad_()
        teacher = ((torch.rand(4, 6, generator=g) * 2 - 1) * 1e4).to(dtype)
        labels = torch.tensor([0, 1, 2, 5])
        terms = distillation_loss_terms(student, teacher, labels, alpha=0.5, temperature=temperature)
        for value in terms:
            assert value.dtype == torch.float32
            assert torch.isfinite(value)
        terms.total.backward()
        _finite_grads(student)

    @pytest.mark.parametrize("dtype", LOW_PRECISION + [torch.float64])
    @pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
    def test_class_masked_in_both_contributes_nothing(self, dtype, temperature):
        p = t([[1.0, -INF, 0.5, 2.0], [0.0, -INF, -INF, 3.0]], dtype, requires_grad=True)
        q = t([[0.3, -INF, 1.0, -1.0], [1.0, -INF, -INF, 0.0]], dtype, requires_grad=True)
        kl = kl_divergence_discrete(p, q, temperature, reduction="none")
        assert torch.isfinite(kl).all()
        # equal to the KL over the classes that are left
        row0 = ref_kl_div(p.detach()[0, [0, 2, 3]], q.detach()[0, [0, 2, 3]], temperature, "sum")
        row1 = ref_kl_div(p.detach()[1, [0, 3]], q.detach()[1, [0, 3]], temperature, "sum")
        torch.testing.assert_close(kl.double(), torch.stack([row0, row1]), rtol=1e-5, atol=1e-6)
        kl.sum().backward()
        _finite_grads(p, q)
        assert p.grad[0, 1] == 0 and q.grad[0, 1] == 0 and (p.grad[1, 1:3] == 0).all()

    @pytest.mark.parametrize("dtype", LOW_PRECISION + [torch.float64])
    @pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
    def test_class_masked_in_p_only_contributes_zero(self, dtype, temperature):
        p = t([[1.0, -INF, 0.5], [-INF, -INF, 2.0]], dtype, requires_grad=True)
        q = t([[0.3, 4.0, 1.0], [1.0, 2.0, 0.0]], dtype, requires_grad=True)
        kl = kl_divergence_discrete(p, q, temperature, reduction="none")
        assert torch.isfinite(kl).all()
        # by hand, sum over the support of P only (F.kl_div itself gives NaN here)
        log_p = F.log_softmax(p.detach().double() / temperature, -1)
        log_q = F.log_softmax(q.detach().double() / temperature, -1)
        support = torch.isfinite(log_p)
        expected = torch.where(support, log_p.exp() * (log_p - log_q), torch.zeros(())).sum(-1)
        torch.testing.assert_close(kl.double(), expected, rtol=1e-5, atol=1e-6)
        assert torch.isnan(F.kl_div(log_q, log_p, log_target=True, reduction="none")).any()
        kl.sum().backward()
        _finite_grads(p, q)
        # second row: P is one-hot, so KL = -log Q_2
        assert kl[1].item() == pytest.approx(-log_q[1, 2].item(), rel=1e-2 if dtype == torch.bfloat16 else 1e-4)

    @pytest.mark.parametrize("dtype", LOW_PRECISION)
    def test_distillation_with_masked_teacher_classes(self, dtype):
        student = t([[0.5, 1.0, -0.5, 2.0], [1.0, 0.0, 0.0, -1.0]], dtype, requires_grad=True)
        teacher = t([[2.0, -INF, 1.0, -INF], [-INF, 3.0, -INF, 0.0]], dtype, requires_grad=True)
        loss = distillation_loss(student, teacher, torch.tensor([0, 1]))
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        _finite_grads(student)
        assert teacher.grad is None

    @pytest.mark.parametrize("log10_sigma_p", [-3, -1, 0, 2, 3])
    @pytest.mark.parametrize("log10_sigma_q", [-3, -2, 0, 1, 3])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_gaussian_extreme_sigma_ratios(self, log10_sigma_p, log10_sigma_q, dtype):
        # ratios sigma_p / sigma_q from 1e-6 to 1e6
        sigma_p = torch.full((4,), 10.0**log10_sigma_p, dtype=dtype, requires_grad=True)
        sigma_q = torch.full((4,), 10.0**log10_sigma_q, dtype=dtype, requires_grad=True)
        mu_p = t([0.0, 1.0, -3.0, 0.5], dtype, requires_grad=True)
        mu_q = t([0.0, 1.5, 2.0, 0.5], dtype, requires_grad=True)
        kl = kl_divergence_gaussian(mu_p, sigma_p, mu_q, sigma_q, reduction="none")
        assert kl.dtype == dtype and torch.isfinite(kl).all()
        expected = gaussian_closed_form64(mu_p.detach(), sigma_p.detach(), mu_q.detach(), sigma_q.detach())
        rtol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(kl.double(), expected, rtol=rtol, atol=1e-6 if dtype == torch.float32 else 1e-12)
        kl.sum().backward()
        _finite_grads(mu_p, sigma_p, mu_q, sigma_q)

    @pytest.mark.parametrize(
        "sigma_p, sigma_q", [(1e-6, 1.0), (1.0, 1e-6), (1e6, 1.0), (1.0, 1e6), (1e-3, 1e3), (1e3, 1e-3)]
    )
    def test_gaussian_extreme_absolute_sigmas(self, sigma_p, sigma_q):
        args = (t([0.0, 1.0]), t([sigma_p, sigma_p]), t([0.0, -1.0]), t([sigma_q, sigma_q]))
        kl = kl_divergence_gaussian(*args, reduction="none")
        assert torch.isfinite(kl).all()
        torch.testing.assert_close(kl.double(), gaussian_closed_form64(*args), rtol=1e-5, atol=1e-6)
        diag = kl_divergence_gaussian_diagonal(*args, reduction="none")
        torch.testing.assert_close(diag.double(), gaussian_closed_form64(*args).sum(), rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("ratio", [1 + 1e-3, 1 - 1e-3, 1 + 3e-4])
    def test_gaussian_near_equal_sigmas_keep_relative_precision_in_float32(self, ratio):
        # log(sigma_q/sigma_p) + sigma_p^2/(2 sigma_q^2) - 1/2 cancels badly in float32 when the
        # ratio is near 1 (1-30 % error here); the expm1 form keeps the relative error ~1e-4.
        sigma_p = t([1.0, 3.0, 0.02])
        sigma_q = (sigma_p.double() * ratio).float()
        mu = torch.zeros(3)
        kl = kl_divergence_gaussian(mu, sigma_p, mu, sigma_q, reduction="none")
        expected = gaussian_closed_form64(mu, sigma_p, mu, sigma_q)
        torch.testing.assert_close(kl.double(), expected, rtol=2e-3, atol=0.0)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_gaussian_low_precision_inputs(self, dtype):
        args = [x.to(dtype) for x in (t(NB_MU_P), t(NB_SIGMA_P), t(NB_MU_Q), t(NB_SIGMA_Q))]
        kl = kl_divergence_gaussian(*args)
        assert kl.dtype == torch.float32
        expected = gaussian_closed_form64(*args).mean()
        torch.testing.assert_close(kl.double(), expected, rtol=1e-5, atol=1e-7)


# =========================================================================== 5. bad input


def _logits(*shape):
    return torch.zeros(*shape)


class TestArgumentChecks:
    @pytest.mark.parametrize(
        "temperature, shown", [(0, "temperature=0"), (0.0, "temperature=0.0"), (-1, "temperature=-1"),
                               (NAN, "temperature=nan"), (INF, "temperature=inf"), (-INF, "temperature=-inf")]
    )
    def test_bad_temperature(self, temperature, shown):
        with pytest.raises(ValueError, match=re.escape(shown) + r"\b"):
            kl_divergence_discrete(_logits(2, 3), _logits(2, 3), temperature=temperature)
        with pytest.raises(ValueError, match=re.escape(shown) + r"\b"):
            distillation_loss(_logits(2, 3), _logits(2, 3), torch.tensor([0, 1]), temperature=temperature)
        with pytest.raises(ValueError, match=re.escape(shown) + r"\b"):
            distillation_loss_terms(_logits(2, 3), _logits(2, 3), torch.tensor([0, 1]), temperature=temperature)

    @pytest.mark.parametrize("temperature", [None, "3", True, torch.tensor(2.0)])
    def test_temperature_not_a_real_number(self, temperature):
        with pytest.raises(ValueError, match="temperature="):
            kl_divergence_discrete(_logits(2, 3), _logits(2, 3), temperature=temperature)

    @pytest.mark.parametrize("alpha, shown", [(-0.1, "alpha=-0.1"), (1.1, "alpha=1.1"), (NAN, "alpha=nan"), (INF, "alpha=inf")])
    def test_bad_alpha(self, alpha, shown):
        with pytest.raises(ValueError, match=re.escape(shown) + r"\b"):
            distillation_loss(_logits(2, 3), _logits(2, 3), torch.tensor([0, 1]), alpha=alpha)
        with pytest.raises(ValueError, match=re.escape(shown) + r"\b"):
            distillation_loss_terms(_logits(2, 3), _logits(2, 3), torch.tensor([0, 1]), alpha=alpha)

    @pytest.mark.parametrize("alpha", [0, 0.0, 1, 1.0, 0.5])
    def test_alpha_bounds_are_allowed(self, alpha):
        assert torch.isfinite(distillation_loss(_logits(2, 3), _logits(2, 3), torch.tensor([0, 1]), alpha=alpha))

    @pytest.mark.parametrize("fn", [kl_divergence_gaussian, kl_divergence_gaussian_diagonal])
    @pytest.mark.parametrize("which", ["sigma_p", "sigma_q"])
    @pytest.mark.parametrize("bad, shown", [(0.0, "0.0"), (-2.0, "-2.0"), (NAN, "nan"), (-INF, "-inf")])
    def test_bad_sigma(self, fn, which, bad, shown):
        sigma = {"sigma_p": t([1.0, 2.0, 3.0]), "sigma_q": t([1.0, 2.0, 3.0])}
        sigma[which][1] = bad
        with pytest.raises(ValueError, match=rf"{which}\b.*{re.escape(shown)}"):
            fn(t([0.0, 0.0, 0.0]), sigma["sigma_p"], t([0.0, 0.0, 0.0]), sigma["sigma_q"])

    def test_gaussian_shapes_must_broadcast(self):
        with pytest.raises(ValueError, match=r"broadcast.*\(3,\).*\(4,\)"):
            kl_divergence_gaussian(torch.zeros(3), torch.ones(3), torch.zeros(4), torch.ones(4))

    def test_gaussian_non_tensor(self):
        with pytest.raises(ValueError, match="mu_p"):
            kl_divergence_gaussian(0.0, torch.ones(1), torch.zeros(1), torch.ones(1))

    def test_p_q_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"p_logits.*q_logits.*\(2, 3\).*\(2, 4\)"):
            kl_divergence_discrete(_logits(2, 3), _logits(2, 4))

    def test_student_teacher_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"student_logits.*teacher_logits.*\(2, 3\).*\(3, 3\)"):
            distillation_loss(_logits(2, 3), _logits(3, 3), torch.tensor([0, 1]))

    @pytest.mark.parametrize("bad", [-1, 3, 7])
    def test_labels_out_of_range(self, bad):
        with pytest.raises(ValueError, match=rf"labels.*\[0, 3\).*found {bad}\b"):
            distillation_loss(_logits(2, 3), _logits(2, 3), torch.tensor([0, bad]))
        with pytest.raises(ValueError, match=rf"labels.*found {bad}\b"):
            distillation_loss_terms(_logits(2, 3), _logits(2, 3), torch.tensor([bad, 0]))

    @pytest.mark.parametrize("labels, shown", [(torch.tensor([0.0, 1.0]), "float32"),
                                               (torch.tensor([True, False]), "bool"), ([0, 1], "list")])
    def test_labels_must_be_integer_tensor(self, labels, shown):
        with pytest.raises(ValueError, match=rf"labels.*integer.*{shown}"):
            distillation_loss(_logits(2, 3), _logits(2, 3), labels)

    def test_labels_batch_size_mismatch(self):
        with pytest.raises(ValueError, match=r"labels.*\(3,\).*\(2, 3\)"):
            distillation_loss(_logits(2, 3), _logits(2, 3), torch.tensor([0, 1, 2]))

    @pytest.mark.parametrize("reduction", ["mean", "Batchmean", "avg", ""])
    def test_unknown_discrete_reduction(self, reduction):
        with pytest.raises(ValueError, match=re.escape(f"reduction={reduction!r}")):
            kl_divergence_discrete(_logits(2, 3), _logits(2, 3), reduction=reduction)

    @pytest.mark.parametrize("fn", [kl_divergence_gaussian, kl_divergence_gaussian_diagonal])
    @pytest.mark.parametrize("reduction", ["batchmean", "MEAN", "elementwise_mean"])
    def test_unknown_gaussian_reduction(self, fn, reduction):
        with pytest.raises(ValueError, match=re.escape(f"reduction={reduction!r}")):
            fn(torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3), reduction=reduction)

    @pytest.mark.parametrize("bad", [torch.tensor([1, 2]), [0.0, 1.0]])
    def test_logits_must_be_float_tensor(self, bad):
        with pytest.raises(ValueError, match="p_logits"):
            kl_divergence_discrete(bad, torch.zeros(2))

    def test_checks_are_not_asserts(self):
        # python -O strips assert statements; the checks must still raise ValueError
        script = textwrap.dedent(
            """
            import sys, torch
            from kdrun.losses import distillation_loss, kl_divergence_discrete, kl_divergence_gaussian
            assert False, "unreachable under -O"  # proves asserts are stripped
            checks = [
                lambda: kl_divergence_discrete(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0),
                lambda: kl_divergence_gaussian(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.ones(2)),
                lambda: distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 3])),
                lambda: distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), alpha=1.5),
            ]
            for check in checks:
                try:
                    check()
                except ValueError as exc:
                    print("ValueError:", exc)
                else:
                    sys.exit("no ValueError")
            print("optimize", sys.flags.optimize)
            """
        )
        package_root = str(Path(kdrun.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run(
            [sys.executable, "-O", "-c", script], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("ValueError:") == 4
        assert "optimize 1" in out.stdout
        assert "temperature=0.0" in out.stdout and "sigma_p" in out.stdout and "alpha=1.5" in out.stdout


# =========================================================================== 6. device and dtype


def _device_params():
    return [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
        "meta",
    ]


def _skip_if_meta_unsupported(device, call):
    try:
        return call()
    except (RuntimeError, NotImplementedError) as exc:
        if device == "meta" and "meta" in str(exc):
            pytest.skip(f"meta tensors cannot run this function's data-dependent checks: {exc}")
        raise


class TestDeviceAndDtype:
    @pytest.mark.parametrize("device", _device_params())
    @pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
    def test_discrete_stays_on_device(self, device, reduction):
        p = torch.randn(3, 4, device=device)
        q = torch.randn(3, 4, device=device)
        kl = kl_divergence_discrete(p, q, 2.0, reduction)
        assert kl.device.type == device
        assert kl.shape == ((3,) if reduction == "none" else ())
        assert kl.dtype == torch.float32
        if device != "meta":
            torch.testing.assert_close(kl.cpu().double(), _reduce_ref(p.cpu(), q.cpu(), reduction), atol=1e-6, rtol=1e-6)

    @pytest.mark.parametrize("device", _device_params())
    def test_gaussian_stays_on_device(self, device):
        args = (torch.randn(3, device=device), torch.rand(3, device=device) + 0.5,
                torch.randn(3, device=device), torch.rand(3, device=device) + 0.5)
        kl = _skip_if_meta_unsupported(device, lambda: kl_divergence_gaussian(*args))
        assert kl.device.type == device and kl.dtype == torch.float32
        kl = _skip_if_meta_unsupported(device, lambda: kl_divergence_gaussian_diagonal(*args))
        assert kl.device.type == device and kl.dtype == torch.float32

    @pytest.mark.parametrize("device", _device_params())
    def test_distillation_stays_on_device(self, device):
        student = torch.randn(3, 4, device=device, requires_grad=True)
        teacher = torch.randn(3, 4, device=device)
        labels = torch.tensor([0, 1, 3], device=device)
        terms = _skip_if_meta_unsupported(device, lambda: distillation_loss_terms(student, teacher, labels))
        for value in terms:
            assert value.device.type == device and value.dtype == torch.float32

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
    def test_result_dtypes(self, dtype):
        expected = torch.float64 if dtype == torch.float64 else torch.float32
        p, q = rand(3, 4, seed=90).to(dtype), rand(3, 4, seed=91).to(dtype)
        for reduction in ("batchmean", "sum", "none"):
            assert kl_divergence_discrete(p, q, 2.0, reduction).dtype == expected
        sigma = (rand(3, 4, seed=92) * 0.3).exp().to(dtype)
        for reduction in ("mean", "sum", "none"):
            assert kl_divergence_gaussian(p, sigma, q, sigma, reduction).dtype == expected
            assert kl_divergence_gaussian_diagonal(p, sigma, q, sigma, reduction).dtype == expected
        for value in distillation_loss_terms(p, q, torch.tensor([0, 1, 2])):
            assert value.dtype == expected
        assert distillation_loss(p, q, torch.tensor([0, 1, 2])).dtype == expected

    def test_mixed_dtypes_promote(self):
        p = rand(2, 3, seed=93).to(torch.float16)
        q = rand(2, 3, seed=94).to(torch.float64)
        assert kl_divergence_discrete(p, q).dtype == torch.float64
        assert kl_divergence_discrete(p, q.float()).dtype == torch.float32

    def test_float64_is_really_computed_in_float64(self):
        # KL ~ 1.25e-9 here is far below float32's rounding of log-probabilities (~6e-8)
        p = t([[0.0, 1e-4]], torch.float64)
        q = t([[0.0, 0.0]], torch.float64)
        kl = kl_divergence_discrete(p, q)
        assert kl.dtype == torch.float64
        assert kl.item() == pytest.approx(1e-8 / 8, rel=1e-4)  # ~ d^2 / 8 for two classes

    def test_inputs_are_not_modified(self):
        p, q = rand(3, 4, seed=95), rand(3, 4, seed=96)
        p0, q0 = p.clone(), q.clone()
        kl_divergence_discrete(p, q, 2.0)
        distillation_loss(q, p, torch.tensor([0, 1, 2]))
        assert torch.equal(p, p0) and torch.equal(q, q0)


def _reduce_ref(p, q, reduction):
    per_row = ref_kl_div(p, q, 2.0, "none").sum(-1)
    return {"batchmean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
