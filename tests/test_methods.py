"""The distillation methods beyond Hinton's KD: each formula against an independent float64
computation from the paper's definition (written here, with numpy, not calling kdrun), gradients
by gradcheck, extreme logits and temperatures, bad arguments, and every method through the real
CLI."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest
import torch
from conftest import has_traceback, run_kdrun

from kdrun.data import Split
from kdrun.errors import ConfigError
from kdrun.losses import (
    ATLoss,
    DISTLoss,
    DKDLoss,
    FitNetLoss,
    JSLoss,
    KDLoss,
    MSELogitsLoss,
    ReverseKLLoss,
    attention_transfer_loss,
    dist_loss,
    dkd_loss,
    kl_divergence_discrete,
    standardize_logits,
)
from kdrun.losses.functional import MIN_LOGIT_STD
from kdrun.models import CNN, MLP
from kdrun.train import Distillation, FitSettings, fit


def logits(*shape, seed=0, scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl(p, q):
    return float((p * (np.log(p) - np.log(q))).sum(-1).mean())


# --------------------------------------------------------------------------- against the definitions


def test_standardize_logits_is_the_z_score_with_the_unbiased_std():
    z = logits(5, 7)
    expected = (z.numpy() - z.numpy().mean(-1, keepdims=True)) / (z.numpy().std(-1, ddof=1, keepdims=True) + 1e-7)
    np.testing.assert_allclose(standardize_logits(z).numpy(), expected, rtol=1e-12)
    shifted_scaled = standardize_logits(3 * z + 11)  # relations only: scale and offset are gone
    np.testing.assert_allclose(shifted_scaled.numpy(), expected, rtol=1e-6)


def test_standardize_logits_keeps_gradients_of_flat_rows_bounded():
    """Constant rows (a zero-initialised head) and rows flat to rounding: finite gradients no
    larger than about 1 / MIN_LOGIT_STD, where the paper's sigma + 1e-7 alone gives 1e7; rows
    spread at least MIN_LOGIT_STD get the paper's formula exactly."""
    noise = 1e-7 * logits(3, 5, seed=21).float()
    upstream = logits(3, 5, seed=22, scale=1.0).float()  # d loss / d standardised logits
    for z in (torch.zeros(3, 5), torch.full((3, 5), 4.0), torch.ones(3, 5) + noise):
        (grad,) = torch.autograd.grad((standardize_logits(z.requires_grad_()) * upstream).sum(), z)
        assert torch.isfinite(grad).all() and grad.abs().max() <= 2 * upstream.abs().max() / MIN_LOGIT_STD, grad.abs().max()
    barely = logits(4, 6, seed=23) * 2 * MIN_LOGIT_STD  # std ~ 6e-4: above the floor
    z = barely.numpy()
    paper = (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)
    np.testing.assert_allclose(standardize_logits(barely).numpy(), paper, rtol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_is_alpha_tckd_plus_beta_nckd_from_the_paper(temperature):
    s, t = logits(6, 5, seed=1), logits(6, 5, seed=2)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    ps, pt = softmax(s.numpy() / temperature), softmax(t.numpy() / temperature)
    rows = np.arange(6)
    bs = np.stack([ps[rows, y], 1 - ps[rows, y]], -1)
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], -1)
    others = ~np.eye(5, dtype=bool)[y]
    hat_s = ps[others].reshape(6, 4) / (1 - ps[rows, y])[:, None]
    hat_t = pt[others].reshape(6, 4) / (1 - pt[rows, y])[:, None]
    tckd, nckd = temperature**2 * kl(bt, bs), temperature**2 * kl(hat_t, hat_s)
    got = dkd_loss(s, t, y, alpha=1.5, beta=8.0, temperature=temperature)
    assert got.item() == pytest.approx(1.5 * tckd + 8.0 * nckd, rel=1e-10)
    # Hinton's KD is TCKD + (1 - p_t) NCKD, per example: the decomposition the paper starts from
    per_example = [temperature**2 * (kl(bt[i : i + 1], bs[i : i + 1]) + (1 - pt[i, y[i]]) * kl(hat_t[i : i + 1], hat_s[i : i + 1])) for i in range(6)]
    assert np.mean(per_example) == pytest.approx(temperature**2 * kl_divergence_discrete(t, s, temperature).item(), rel=1e-10)


def test_dist_is_one_minus_pearson_between_and_within_classes():
    s, t = logits(8, 6, seed=3), logits(8, 6, seed=4)
    ys, yt = softmax(s.numpy() / 2.0), softmax(t.numpy() / 2.0)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(8)])
    intra = 1 - np.mean([np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(6)])
    got = dist_loss(s, t, beta=2.0, gamma=0.5, temperature=2.0)
    assert got.item() == pytest.approx(4.0 * (2.0 * inter + 0.5 * intra), rel=1e-6)  # eps 1e-8 in the denominators


def test_dist_counts_no_intra_class_term_for_a_batch_of_one_row():
    """An epoch's last batch may be a single row: it has no relations across the batch, so intra
    is 0 (not the constant T^2 a Pearson correlation of one value gives) and the rest trains."""
    s, t, y = logits(1, 5, seed=26).requires_grad_(), logits(1, 5, seed=27), torch.tensor([3])
    loss = DISTLoss(beta=2.0, gamma=0.5, temperature=2.0)
    got = loss(s, t, y)
    assert got["intra"].item() == 0.0
    assert got["loss"].item() == pytest.approx(got["hard_loss"].item() + 2.0 * got["inter"].item(), rel=1e-12)
    (grad,) = torch.autograd.grad(got["loss"], s)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    pair = loss(logits(2, 5, seed=26), logits(2, 5, seed=27), torch.tensor([3, 0]))
    assert pair["intra"].item() > 0  # from two rows on, the paper's term


def test_reverse_kl_and_js_swap_the_divergence_in_hintons_loss():
    s, t = logits(5, 4, seed=5), logits(5, 4, seed=6)
    y = torch.tensor([0, 1, 2, 3, 0])
    p, q = softmax(t.numpy() / 3.0), softmax(s.numpy() / 3.0)
    ce = torch.nn.functional.cross_entropy(s, y).item()
    reverse = ReverseKLLoss(0.6, 3.0)
    got = reverse(s, reverse.teacher_targets(t), y)
    assert got["soft_loss"].item() == pytest.approx(9.0 * kl(q, p), rel=1e-10)
    assert got["loss"].item() == pytest.approx(0.6 * 9.0 * kl(q, p) + 0.4 * ce, rel=1e-10)
    m = (p + q) / 2
    js = JSLoss(0.6, 3.0)
    got = js(s, js.teacher_targets(t), y)
    assert got["soft_loss"].item() == pytest.approx(9.0 * (0.5 * kl(p, m) + 0.5 * kl(q, m)), rel=1e-10)
    assert 0 <= got["soft_loss"].item() / 9.0 <= math.log(2)


def test_js_and_reverse_kl_leave_a_masked_teacher_class_out_as_the_forward_kl_does():
    """A teacher logit of -inf (P = 0): finite losses and gradients. JS is its definition with
    0 log 0 = 0; the reverse KL is taken with the student's softmax over the teacher's classes."""
    s, t = logits(3, 4, seed=24).requires_grad_(), logits(3, 4, seed=25)
    t[:, 1] = -math.inf
    y = torch.tensor([0, 2, 3])
    p, q = softmax(t.numpy() / 2.0), softmax(s.detach().numpy() / 2.0)
    m = (p + q) / 2
    keep = [0, 2, 3]
    q_kept = softmax(s.detach().numpy()[:, keep] / 2.0)
    expected = {
        JSLoss: 4.0 * 0.5 * float((p[:, keep] * np.log(p[:, keep] / m[:, keep])).sum(-1).mean() + kl(q, m)),
        ReverseKLLoss: 4.0 * kl(q_kept, p[:, keep]),
    }
    for cls, value in expected.items():
        loss = cls(0.5, 2.0)
        got = loss(s, loss.teacher_targets(t), y)
        assert got["soft_loss"].item() == pytest.approx(value, rel=1e-10), cls.__name__
        (grad,) = torch.autograd.grad(got["loss"], s)
        assert torch.isfinite(grad).all(), cls.__name__
    (grad,) = torch.autograd.grad(dkd_loss(s, t, y), s)  # DKD shares the masking KL
    assert torch.isfinite(grad).all()


def test_mse_logits_is_the_mean_squared_difference():
    s, t = logits(4, 3, seed=7), logits(4, 3, seed=8)
    got = MSELogitsLoss()(s, t, None)
    assert got["loss"].item() == pytest.approx(float(((s.numpy() - t.numpy()) ** 2).mean()), rel=1e-12)


def test_kd_with_standardisation_is_kd_on_z_scores():
    s, t = logits(5, 6, seed=9), logits(5, 6, seed=10)
    y = torch.tensor([0, 1, 2, 3, 4])
    zs, zt = ((z.numpy() - z.numpy().mean(-1, keepdims=True)) / (z.numpy().std(-1, ddof=1, keepdims=True) + 1e-7) for z in (s, t))
    expected = 4.0 * kl(softmax(zt / 2.0), softmax(zs / 2.0))
    loss = KDLoss(0.5, 2.0, standardize=True)
    assert loss(s, t, y)["soft_loss"].item() == pytest.approx(expected, rel=1e-9)
    assert loss(s, loss.teacher_targets(t), y)["soft_loss"].item() == pytest.approx(expected, rel=1e-9)  # precomputed
    assert loss(3 * s + 5, t, y)["soft_loss"].item() == pytest.approx(expected, rel=1e-5)  # the student's scale is free


def test_attention_transfer_compares_normalised_channel_means_of_powers():
    fs, ft = logits(2, 3, 4, 4, seed=11), logits(2, 5, 4, 4, seed=12)  # channel counts may differ
    def maps(f, p):
        q = (np.abs(f) ** p).mean(1).reshape(len(f), -1)
        return q / np.linalg.norm(q, axis=1, keepdims=True)
    for p in (2.0, 1.0):
        expected = float(((maps(fs.numpy(), p) - maps(ft.numpy(), p)) ** 2).mean())
        assert attention_transfer_loss(fs, ft, p=p).item() == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- gradients and extremes


def test_gradients_match_finite_differences():
    s, t = logits(4, 5, seed=13).requires_grad_(), logits(4, 5, seed=14)
    y = torch.tensor([0, 2, 4, 1])
    assert torch.autograd.gradcheck(lambda z: dkd_loss(z, t, y, 1.0, 8.0, 4.0), (s,))
    assert torch.autograd.gradcheck(lambda z: dist_loss(z, t, 1.0, 1.0, 2.0), (s,))
    assert torch.autograd.gradcheck(standardize_logits, (s,))
    js, reverse = JSLoss(0.5, 2.0), ReverseKLLoss(0.5, 2.0)
    assert torch.autograd.gradcheck(lambda z: js(z, js.teacher_targets(t), y)["loss"], (s,))
    assert torch.autograd.gradcheck(lambda z: reverse(z, reverse.teacher_targets(t), y)["loss"], (s,))
    f = logits(2, 3, 3, 3, seed=15).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: attention_transfer_loss(x, logits(2, 4, 3, 3, seed=16)), (f,))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
@pytest.mark.parametrize("temperature", [0.01, 1.0, 1000.0])
def test_extreme_logits_and_temperatures_stay_finite(scale, temperature):
    s, t = logits(6, 10, seed=17, scale=scale).float(), logits(6, 10, seed=18, scale=scale).float()
    y = torch.arange(6)
    values = [dkd_loss(s, t, y, temperature=temperature), dist_loss(s, t, temperature=temperature), standardize_logits(s).abs().max()]
    for loss in (KDLoss(0.5, temperature, standardize=True), ReverseKLLoss(0.5, temperature), JSLoss(0.5, temperature)):
        values += list(loss(s, loss.teacher_targets(t), y).values())
    assert all(bool(torch.isfinite(v)) for v in values), values


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: dkd_loss(logits(2, 3), logits(2, 3), torch.tensor([0, 1]), alpha=-1.0), "alpha"),
        (lambda: dkd_loss(logits(2, 3), logits(2, 3), torch.tensor([0, 3])), "labels"),
        (lambda: dkd_loss(logits(2, 3), logits(2, 4), torch.tensor([0, 1])), "same shape"),
        (lambda: dkd_loss(logits(2, 3), logits(2, 3), torch.tensor([0, 1]), temperature=0.0), "temperature"),
        (lambda: dist_loss(logits(2, 3), logits(2, 3), gamma=float("nan")), "gamma"),
        (lambda: dist_loss(logits(1, 3), logits(1, 3)), "batch"),
        (lambda: standardize_logits(logits(3, 1)), "2 classes"),
        (lambda: standardize_logits(torch.ones(2, 3, dtype=torch.long)), "floating-point"),
        (lambda: attention_transfer_loss(logits(2, 3, 4, 4), logits(2, 3, 2, 2)), "spatial"),
        (lambda: attention_transfer_loss(logits(2, 3), logits(2, 3)), "[B, C, H, W]"),
        (lambda: attention_transfer_loss(logits(2, 3, 2, 2), logits(2, 3, 2, 2), p=0), "p="),
        (lambda: attention_transfer_loss(logits(2, 3, 2, 2), logits(2, 3, 2, 2), p=0.5), "p=0.5"),
        (lambda: ATLoss(p=0.5), "p=0.5: must be a finite number >= 1"),
        (lambda: DKDLoss(warmup_epochs=-1), "warmup_epochs"),
        (lambda: DKDLoss(warmup_epochs=True), "warmup_epochs"),
        (lambda: FitNetLoss(hint_fraction=1.5), "hint_fraction"),
        (lambda: FitNetLoss(hint_fraction=float("nan")), "hint_fraction"),
        (lambda: FitNetLoss(kernel_size=2), "kernel_size"),
        (lambda: FitNetLoss(alpha=2.0), "alpha"),
        (lambda: ATLoss(beta=-1.0), "beta"),
        (lambda: DISTLoss(temperature=-2.0), "temperature"),
        (lambda: DKDLoss()(logits(2, 3), logits(2, 3), None), "DKDLoss needs labels"),
        (lambda: dkd_loss(logits(2, 1), logits(2, 1), torch.tensor([0, 0])), "at least 2 classes"),
        (lambda: DKDLoss()(logits(2, 1), logits(2, 1), torch.tensor([0, 0])), "at least 2 classes"),  # was NaN, silently
        (lambda: DISTLoss()(logits(2, 3), logits(2, 3), None), "DISTLoss needs labels.*ce_weight=0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, argument):
    with pytest.raises(ValueError, match=argument.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_dkd_warms_up_linearly_over_its_epochs():
    s, t, y = logits(4, 5, seed=19), logits(4, 5, seed=20), torch.tensor([0, 1, 2, 3])
    loss = DKDLoss(warmup_epochs=4)
    totals = []
    for epoch in (1, 2, 4, 8):
        loss.set_epoch(epoch, 20)  # a number is taken as it is, whatever the run's length
        parts = loss(s, t, y)
        totals.append(parts["loss"].item() - parts["hard_loss"].item())
    full = (loss.alpha * parts["tckd"] + loss.beta * parts["nckd"]).item()
    assert totals == pytest.approx([full / 4, full / 2, full, full])


@pytest.mark.parametrize("epochs, warmup", [(240, 20), (120, 10), (20, 2), (1, 1)])
def test_dkd_default_warm_up_is_the_papers_share_of_the_run(epochs, warmup):
    """The default is the paper's 20 of 240 epochs; a 20-epoch run gets 2, not all 20 (which
    reached full weight only in the last epoch)."""
    loss = DKDLoss()
    weights = []
    for epoch in range(1, epochs + 1):
        loss.set_epoch(epoch, epochs)
        weights.append(loss.warmup)
    assert weights[: warmup] == pytest.approx([e / warmup for e in range(1, warmup + 1)])
    assert weights[warmup - 1 :] == [1.0] * (epochs - warmup + 1)


# --------------------------------------------------------------------------- FitNets and attention transfer


@pytest.mark.parametrize("epochs, fraction, hinted", [(1, 0.5, 0), (2, 0.5, 1), (10, 0.5, 5), (4, 0.9, 3), (3, 0.1, 1)])
def test_fitnet_hint_stage_always_leaves_the_kd_stage_an_epoch(epochs, fraction, hinted):
    loss = FitNetLoss(hint_fraction=fraction)
    stages = []
    for epoch in range(1, epochs + 1):
        loss.set_epoch(epoch, epochs)
        stages.append(loss.hinting)
    assert stages == [True] * hinted + [False] * (epochs - hinted)


def test_fitnet_with_one_epoch_trains_the_classifier_head():
    """A 1-epoch run is all KD stage: the head, which the hint never reaches, learns (it used to
    keep its initial weights, and the distilled student was at chance)."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    torch.manual_seed(0)
    teacher, student = MLP((6,), 3, hidden=[16, 16, 16]), MLP((6,), 3, hidden=[8])
    head = student.network[-1].weight.detach().clone()
    loss = FitNetLoss()
    settings = FitSettings(epochs=1, batch_size=16, optimizer="adam", lr=1e-2, weight_decay=0.0, batch_seed=0)
    (row,) = fit(student, Split(x, y), Split(x[:8], y[:8]), settings, "distilled", Distillation(loss, teacher))
    assert not loss.hinting and not torch.equal(student.network[-1].weight, head)
    assert row["train_loss"] != pytest.approx(row["hint_loss"])


def test_fitnet_auto_takes_stage_n_over_2_of_each_network():
    """The later middle stage of an even count: a 2-stage CNN's last stage, paired with a 3-stage
    CNN's middle one (the same spatial size); an MLP's hidden ReLUs are counted alike."""
    loss = FitNetLoss()
    loss.setup(CNN((1, 8, 8), 3, channels=[4, 4]), CNN((1, 8, 8), 3, channels=[8, 8, 8]), torch.randn(4, 1, 8, 8))
    assert (loss.student_features, loss.teacher_features) == (("stages.1",), ("stages.1",))
    loss.setup(MLP((6,), 3, hidden=[8]), MLP((6,), 3, hidden=[16, 16, 16]), torch.randn(4, 6))
    assert (loss.student_features, loss.teacher_features) == (("network.1",), ("network.3",))


@pytest.mark.parametrize("loss, message", [
    (FitNetLoss(student_layer="stages.9"), "loss.student_layer=stages.9: the student has no layer stages.9; its layers: "),
    (ATLoss(teacher_layers=["stages.0", "nope"]), "loss.teacher_layers=['stages.0', 'nope']: the teacher has no layer nope; its layers: "),
])
def test_a_layer_the_model_lacks_is_named_with_the_setting_that_chose_it(loss, message):
    student, teacher = CNN((1, 8, 8), 3, channels=[4, 4]), CNN((1, 8, 8), 3, channels=[8, 8])
    if isinstance(loss, ATLoss):
        loss.student_layers = ["stages.0", "stages.1"]
    with pytest.raises(ConfigError, match=re.escape(message) + ".*stages.1"):
        loss.setup(student, teacher, torch.randn(4, 1, 8, 8))


@pytest.mark.parametrize("teacher_hidden", [[16], [16, 16, 16]])
def test_attention_transfer_refuses_mlps_under_auto_naming_the_cnns(teacher_hidden):
    """MLPs of equal depth used to reach the shape check, MLPs of different depths a message
    about counting layers; either way the message is that AT needs convolutional models."""
    with pytest.raises(ConfigError, match=r"loss=at needs convolutional models.*model/teacher=cnn model/student=cnn"):
        ATLoss().setup(MLP((6,), 3, hidden=[8]), MLP((6,), 3, hidden=teacher_hidden), torch.randn(4, 6))
    one_stage = CNN((1, 8, 8), 3, channels=[4])
    with pytest.raises(ConfigError, match=r"loss.student_layers=auto pairs the stages after the first .* has one: give it more.*loss.teacher_layers"):
        ATLoss().setup(one_stage, CNN((1, 8, 8), 3, channels=[8, 16]), torch.randn(4, 1, 8, 8))
    at = ATLoss(student_layers=["stages.0"], teacher_layers=["stages.0"])  # named, a one-stage CNN pairs
    at.setup(one_stage, CNN((1, 8, 8), 3, channels=[8, 16]), torch.randn(4, 1, 8, 8))


def test_attention_transfer_gradients_are_finite_at_relu_zeros():
    features = torch.relu(logits(2, 3, 4, 4, seed=28)).requires_grad_()  # about half exactly 0
    for p in (1.0, 2.0, 3.5):
        (grad,) = torch.autograd.grad(attention_transfer_loss(features, logits(2, 5, 4, 4, seed=29), p=p), features)
        assert torch.isfinite(grad).all(), p


def _stage_outputs(model: CNN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs = {}
    for index, stage in enumerate(model.stages):
        x = outputs[f"stages.{index}"] = stage(x)
    return outputs


def test_dist_and_at_learn_without_labels_when_their_cross_entropy_weight_is_0():
    s, t = logits(4, 5, seed=30), logits(4, 5, seed=31)
    assert DISTLoss(ce_weight=0.0).learns_without_labels and ATLoss(ce_weight=0.0).learns_without_labels
    assert not any(loss.learns_without_labels for loss in (DISTLoss(), ATLoss(), DKDLoss(ce_weight=0.0)))
    got = DISTLoss(ce_weight=0.0)(s, t, None)
    assert set(got) == {"loss", "inter", "intra"} and got["loss"].item() == pytest.approx(dist_loss(s, t, beta=2.0, gamma=2.0).item(), rel=1e-12)

    torch.manual_seed(0)
    student, teacher, x = CNN((1, 8, 8), 5, channels=[4, 4]), CNN((1, 8, 8), 5, channels=[8, 8]), torch.randn(4, 1, 8, 8)
    for ce_weight in (0.0, 1.0):
        at = ATLoss(ce_weight=ce_weight)
        at.setup(student, teacher, x)
        call = lambda: at(student(x), teacher(x), None, student_features=_stage_outputs(student, x), teacher_features=_stage_outputs(teacher, x))  # noqa: E731
        if ce_weight:
            with pytest.raises(ValueError, match="ATLoss needs labels.*ce_weight=0"):
                call()
        else:
            got = call()
            assert set(got) == {"loss", "at_loss"} and got["loss"].item() == pytest.approx(1000 * got["at_loss"].item(), rel=1e-6)


@pytest.mark.slow
def test_dist_without_cross_entropy_runs_on_a_transfer_set_without_labels(tmp_path):
    from kdrun.config import compose, validate
    from kdrun.experiment import run_experiment

    cfg = compose(
        ["loss=dist", "loss.ce_weight=0", "dataset.transfer_labels=false", "dataset.n_samples=120", "trainer.epochs=2",
         "model.teacher.hidden=[16]", "model.student.hidden=[8]", "cache.enabled=false", "plots=false"]
    )  # fmt: skip
    validate(cfg)
    result = run_experiment(cfg, tmp_path)
    assert result.summary["distilled"]["source"] == "trained" and result.summary["baseline"]["source"] == "not_trained"
    distilled = [row for row in result.metrics if row["model"] == "distilled"]
    assert len(distilled) == 2 and "inter" in distilled[0] and "hard_loss" not in distilled[0]


# --------------------------------------------------------------------------- every method through the CLI

METHODS = ("kd", "dkd", "dist", "reverse_kl", "js", "mse_logits", "fitnet", "at")


@pytest.mark.slow
def test_every_method_runs_through_the_cli_and_the_comparison_names_it(tmp_path):
    """One sweep over all the methods and two seeds (digits, tiny CNNs: attention transfer needs
    convolutional stages): every job completes, each method's columns reach metrics.csv, and the
    comparison groups by method with a paired interval and draws the forest plot."""
    sweep = tmp_path / "sweep"
    result = run_kdrun(
        "train", "-m", "experiment=digits_methods", f"loss={','.join(METHODS)}", "trainer.seed=0,1",
        "trainer.teacher_epochs=2", "trainer.student_epochs=3", "model.teacher.channels=[8,8]", "model.student.channels=[4,4]",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path, tiny=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not has_traceback(result.stderr)
    with open(sweep / "comparison_by_config.csv", newline="") as handle:
        groups = {row["loss"]: row for row in csv.DictReader(handle)}
    assert set(groups) == set(METHODS) and all(row["n"] == "2" for row in groups.values())
    assert all(row["improvement_ci_low"] != "" for row in groups.values())
    assert (sweep / "forest.png").stat().st_size > 1000 and not (sweep / "heatmap.png").exists()
    parts = {"dkd": "tckd", "dist": "inter", "fitnet": "hint_loss", "at": "at_loss", "mse_logits": "mse_loss", "js": "soft_loss"}
    for job in sweep.iterdir():
        if job.is_dir() and job.name[0].isdigit():
            method = job.name.split("loss=")[1].split(",")[0]
            header = (job / "metrics.csv").read_text().splitlines()[0]
            assert parts.get(method, "soft_loss") in header, (method, header)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["loss=kd", "loss.standardize=true"], ["loss=fitnet", "loss.kernel_size=3"]])
def test_variants_run_on_mlps_too(tmp_path, overrides):
    result = run_kdrun("train", *overrides, "dataset=digits", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("depths", [[], ["model.teacher.hidden=[16,16]"]])  # MLPs of equal, then different depths
def test_attention_transfer_on_an_mlp_is_one_message(tmp_path, depths):
    result = run_kdrun("train", "loss=at", *depths, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and not has_traceback(result.stderr)
    assert "loss=at needs convolutional models" in result.stderr and "model/teacher=cnn model/student=cnn" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
