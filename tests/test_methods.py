"""The distillation methods beyond Hinton's KD: each formula against an independent float64
computation from the paper's definition (written here, with numpy, not calling kdrun), gradients
by gradcheck, extreme logits and temperatures, bad arguments, and every method through the real
CLI."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import has_traceback, run_kdrun

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
        (lambda: DKDLoss(warmup_epochs=-1), "warmup_epochs"),
        (lambda: FitNetLoss(hint_fraction=1.5), "hint_fraction"),
        (lambda: ATLoss(beta=-1.0), "beta"),
        (lambda: DISTLoss(temperature=-2.0), "temperature"),
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
        loss.set_epoch(epoch, 8)
        parts = loss(s, t, y)
        totals.append(parts["loss"].item() - parts["hard_loss"].item())
    full = (loss.alpha * parts["tckd"] + loss.beta * parts["nckd"]).item()
    assert totals == pytest.approx([full / 4, full / 2, full, full])


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
def test_attention_transfer_on_an_mlp_is_one_message(tmp_path):
    result = run_kdrun("train", "loss=at", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and not has_traceback(result.stderr)
    assert "loss=at" in result.stderr and "convolutional" in result.stderr and len(result.stderr.strip().splitlines()) == 1
