"""The loss layers and error counts (reproduce.losses) against their formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import demo
from reproduce.experiments import paper
from reproduce.experiments import train_command as train_cli
from reproduce.layers import losses
from reproduce.layers.losses import single_class_loss_error


def test_logistic_value_and_gradient():
    x = torch.tensor([[2.0, -1.0, 0.0], [30.0, -30.0, 0.5]], dtype=torch.float64).requires_grad_(True)
    c = torch.tensor([[1.0, 1.0, -1.0], [-1.0, -1.0, 0.0]], dtype=torch.float64)     # last label ignored
    y = losses.ourloss_logistic(x, c)
    ex = sum(math.log1p(math.exp(-cv * xv)) for xv, cv in zip(x.detach().flatten().tolist(), c.flatten().tolist())
             if cv != 0)
    assert y.item() == pytest.approx(ex, rel=1e-12)
    y.backward()
    grad = -c / (1 + torch.exp(c * x.detach()))
    torch.testing.assert_close(x.grad, grad)
    assert x.grad[1, 2].item() == 0.0


def test_logistic_accepts_prediction_layout_and_checks_labels():
    x = torch.randn(4, 3, 1, 1)
    c = torch.ones(4, 3)
    assert losses.ourloss_logistic(x, c).shape == ()
    with pytest.raises(ValueError, match="do not match"):
        losses.ourloss_logistic(x, torch.ones(4, 2))
    with pytest.raises(ValueError, match="spatial"):
        losses.ourloss_logistic(torch.randn(4, 3, 2, 2), c)


def test_softmaxlog_matches_cross_entropy_and_scales_its_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    k = torch.tensor([0, 3, 1, 1, 2])
    y = losses.softmaxlog(x, k, grad_scale=4.0)
    assert y.item() == pytest.approx(F.cross_entropy(x.detach(), k, reduction="sum").item(), rel=1e-12)
    y.backward()
    ref = torch.softmax(x.detach(), 1) - F.one_hot(k, 4).to(x.dtype)
    torch.testing.assert_close(x.grad, 4.0 * ref)
    k_ignored = torch.tensor([0, -1, 1, 1, 2])              # -1 (MATLAB's 0): skipped
    y2 = losses.softmaxlog(x.detach(), k_ignored)
    keep = torch.tensor([0, 2, 3, 4])
    assert y2.item() == pytest.approx(F.cross_entropy(x.detach()[keep], k[keep], reduction="sum").item())


def test_ourloss_softmaxlog_uses_first_argmax_and_multiplies_by_label_count():
    x = torch.randn(3, 3, 1, 1, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([[-1.0, 1.0, -1.0], [1.0, -1.0, 1.0], [-1.0, -1.0, -1.0]])   # ties: first index
    y = losses.ourloss_softmaxlog(x, labels)
    k = torch.tensor([1, 0, 0])
    assert y.item() == pytest.approx(F.cross_entropy(x.detach()[:, :, 0, 0], k, reduction="sum").item())
    y.backward()
    ref = (torch.softmax(x.detach()[:, :, 0, 0], 1) - F.one_hot(k, 3).to(x.dtype)) * 3
    torch.testing.assert_close(x.grad[:, :, 0, 0], ref)


def test_binaryerror_and_error_binary_count_zeros_differently():
    x = torch.tensor([[0.5, -0.2], [0.0, 3.0]])
    c = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    # our_vl_nnloss 'binaryerror': sign(x) ~= c; sign(0) = 0 counts as wrong
    assert losses.binaryerror(x, c).item() == 3.0
    # our_cnn_train error_binary: prediction .* label < 0 (zero is not an error), / labelNum
    assert losses.error_binary(x, c).item() == pytest.approx(2.0 / 2)


def test_error_multiclass_top1_with_ties_and_nan():
    pred = torch.tensor([[0.1, 0.9, 0.9], [2.0, 1.0, 0.0], [0.0, float("nan"), 5.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([[-1.0, 1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, -1.0]])
    # top-1: 1 (first of the tie) ok; 0 vs 1 wrong; NaN sorts first in 'descend' -> 1 ok; 0 ok
    assert losses.error_multiclass(pred, labels).item() == 1.0


# ------------------------------------------------------------------ --loss softmaxlog needs several classes
@pytest.mark.parametrize("command", ["demo", "paper", "train"])
def test_softmaxlog_without_multiclass_is_refused_at_argument_parsing(command, capsys, tmp_path):
    """The original uses lossType only for multi-class nets: one class with softmaxlog would train
    nothing (constant log-softmax) and print an error of 0. Each command line says so at once."""
    single = {"demo": (demo.main, ["--loss", "softmaxlog", "--quick", "--out", str(tmp_path)]),
              "paper": (paper.main, ["--loss", "softmaxlog", "--dataset", "toy", "--dry-run", "--out", str(tmp_path)]),
              "train": (train_cli.main, ["--loss", "ourloss_softmaxlog", "--dataset", "toy", "--category", "toy01",
                                     "--out", str(tmp_path)])}
    main, argv = single[command]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--loss" in err and "softmaxlog needs a multi-class net" in err
    assert ("several --category values" if command == "train" else "(--multiclass)") in err
    assert not any(tmp_path.iterdir())                                        # nothing was started


def test_softmaxlog_with_several_classes_and_logistic_are_accepted():
    assert single_class_loss_error("softmaxlog", True) is None
    assert single_class_loss_error("ourloss_softmaxlog", True) is None
    assert single_class_loss_error("logistic", False) is None
    assert single_class_loss_error("ourloss_logistic", False) is None
