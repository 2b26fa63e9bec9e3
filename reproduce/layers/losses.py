"""The loss layers and the error counts of the ICNN training.

Ports
- `tool/main/our_vl_nnloss.m`, losses 'logistic' and 'binaryerror' (`ourloss_logistic`,
  `binaryerror`), and MatConvNet's `vl_nnloss` 'softmaxlog' (`softmaxlog`);
- the loss-layer cases of `tool/main/our_vl_simplenn.m`: 'ourloss_logistic' / 'ourloss' and
  'ourloss_softmaxlog' (class index = argmax of the +1/-1 labels, backward multiplied by the
  number of labels);
- `error_binary` and `error_multiclass` of `tool/main/our_cnn_train.m`.

Layouts: predictions are N x L (or N x L x 1 x 1, the output of the last conv), labels N x L
of +1 / -1 (0 = ignore, as vl_nnloss does), class indices 0-based (N,) long with -1 = ignore
(MatConvNet's 1-based 0). Every loss is SUMMED over the batch, as the original.

Formulas (x prediction, c label):
    logistic    y = sum log(1 + exp(-c x)),        dy/dx = -c / (1 + exp(c x))
    softmaxlog  y = sum (log sum_q exp(x_q) - x_k), dy/dx = softmax(x) - onehot(k)
    binaryerror y = #(sign(x) != c)
"""
from __future__ import annotations

import torch

__all__ = ["ourloss_logistic", "ourloss_softmaxlog", "softmaxlog", "binaryerror",
           "error_binary", "error_multiclass", "labels_to_class_index", "LOSS_LAYER_TYPES",
           "as_2d", "single_class_loss_error"]

LOSS_LAYER_TYPES = ("ourloss_logistic", "ourloss", "ourloss_softmaxlog", "loss", "softmaxloss")


def single_class_loss_error(loss: str, multiclass: bool, how: str = "--multiclass") -> str | None:
    """Why `--loss softmaxlog` cannot train a single-class net, or None when the choice is fine.

    demo.m's lossType is used only in learn_icnn_multiclass.m; learn_icnn.m
    always builds the logistic loss. With one output, log-softmax is constant:
    the classification gradient is zero and the printed error (top-1 of one
    class) is always 0. The command lines reject it; `how` says how to ask
    for a multi-class net on that command line.
    """
    if loss not in ("softmaxlog", "ourloss_softmaxlog") or multiclass:
        return None
    return (f"--loss {loss} needs a multi-class net ({how}): the original uses lossType only in "
            "learn_icnn_multiclass.m; with a single class the log-softmax of one output is constant, so the "
            "classification gradient is zero and the printed error is always 0. Use --loss logistic "
            "(the default) for one category")


def as_2d(x: torch.Tensor, what: str = "prediction") -> torch.Tensor:
    """N x L x 1 x 1 (or N x L) -> N x L; anything else is an error."""
    if x.dim() == 4:
        if x.shape[2] != 1 or x.shape[3] != 1:
            raise ValueError(f"{what}: expected N x L x 1 x 1, got {tuple(x.shape)} (spatial losses are not supported)")
        return x.reshape(x.shape[0], x.shape[1])
    if x.dim() == 2:
        return x
    raise ValueError(f"{what}: expected N x L or N x L x 1 x 1, got shape {tuple(x.shape)}")


def _check_labels(labels: torch.Tensor, x2: torch.Tensor, what: str) -> torch.Tensor:
    lab = as_2d(labels, f"{what} labels")
    if lab.shape != x2.shape:
        raise ValueError(f"{what}: labels of shape {tuple(lab.shape)} do not match the prediction {tuple(x2.shape)} (N x L)")
    return lab.to(dtype=x2.dtype, device=x2.device)


class _LogisticLoss(torch.autograd.Function):
    """our_vl_nnloss.m 'logistic': forward and backward exactly as written there."""

    @staticmethod
    def forward(ctx, x, c):
        a = -c * x
        b = a.clamp_min(0)
        t = b + torch.log(torch.exp(-b) + torch.exp(a - b))
        weights = (c != 0).to(x.dtype)           # hasIgnoreLabel: instanceWeights = (c ~= 0)
        ctx.save_for_backward(x, c)
        return (t * weights).sum()

    @staticmethod
    def backward(ctx, dzdy):
        x, c = ctx.saved_tensors
        return -dzdy * c / (1 + torch.exp(c * x)), None


def ourloss_logistic(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed logistic loss log(1 + exp(-c x)) on +1/-1 labels (our_vl_nnloss.m, 'logistic').

    x: N x L (x 1 x 1) prediction, labels N x L; returns a 0-d tensor; its backward is
    -c / (1 + exp(c x)) (times the incoming gradient). Labels 0 are ignored.
    """
    x2 = as_2d(x)
    c = _check_labels(labels, x2, "ourloss_logistic")
    return _LogisticLoss.apply(x2, c)


class _SoftmaxLogLoss(torch.autograd.Function):
    """vl_nnloss.m 'softmaxlog' with an optional gradient multiplier (ourloss_softmaxlog's labelNum)."""

    @staticmethod
    def forward(ctx, x, k, grad_scale: float):
        valid = k >= 0
        kk = k.clamp_min(0)
        xmax = x.max(dim=1, keepdim=True).values
        ex = torch.exp(x - xmax)
        sum_ex = ex.sum(dim=1, keepdim=True)
        t = xmax[:, 0] + torch.log(sum_ex[:, 0]) - x.gather(1, kk[:, None])[:, 0]
        ctx.save_for_backward(ex, sum_ex, kk, valid)
        ctx.grad_scale = grad_scale
        return (t * valid.to(x.dtype)).sum()

    @staticmethod
    def backward(ctx, dzdy):
        ex, sum_ex, kk, valid = ctx.saved_tensors
        y = ex / sum_ex
        y = y.scatter_add(1, kk[:, None], -torch.ones_like(kk[:, None], dtype=y.dtype))
        y = y * valid[:, None].to(y.dtype)
        return y * (dzdy * ctx.grad_scale), None, None


def softmaxlog(x: torch.Tensor, class_index: torch.Tensor, grad_scale: float = 1.0) -> torch.Tensor:
    """MatConvNet vl_nnloss 'softmaxlog': sum over images of log(sum_q exp x_q) - x_k.

    class_index: (N,) 0-based class indices (-1 = ignore). The backward is softmax(x) - onehot(k),
    times `grad_scale`.
    """
    x2 = as_2d(x)
    k = class_index.reshape(-1).to(device=x2.device, dtype=torch.long)
    if k.numel() != x2.shape[0]:
        raise ValueError(f"softmaxlog: {k.numel()} class indices for {x2.shape[0]} predictions")
    if bool((k >= x2.shape[1]).any()) or bool((k < -1).any()):
        raise ValueError(f"softmaxlog: class indices must lie in 0..{x2.shape[1] - 1} (-1 = ignore)")
    return _SoftmaxLogLoss.apply(x2, k, float(grad_scale))


def labels_to_class_index(labels: torch.Tensor) -> torch.Tensor:
    """`[~, tmp] = max(class, [], 3)`: the first index of the largest label per image, 0-based."""
    lab = as_2d(labels, "labels")
    return lab.argmax(dim=1)   # torch.argmax returns the first maximal index, as MATLAB's max


def ourloss_softmaxlog(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """our_vl_simplenn.m 'ourloss_softmaxlog': softmaxlog with class = argmax of the +1/-1 labels;
    the backward is multiplied by the number of labels L (`res(i).dzdx .* size(l.class, 3)`)."""
    x2 = as_2d(x)
    lab = _check_labels(labels, x2, "ourloss_softmaxlog")
    return softmaxlog(x2, labels_to_class_index(lab), grad_scale=float(lab.shape[1]))


def binaryerror(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """our_vl_nnloss.m 'binaryerror': the number of entries with sign(x) ~= c (0 counts as wrong;
    labels 0 are ignored). No gradient."""
    x2 = as_2d(x)
    c = _check_labels(labels, x2, "binaryerror")
    wrong = (torch.sign(x2.detach()) != c) & (c != 0)
    return wrong.sum().to(x2.dtype)


def error_binary(prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """our_cnn_train.m `error_binary`: #(prediction .* labels < 0) / labelNum for the batch
    (a zero prediction is not counted)."""
    x2 = as_2d(prediction).detach()
    c = _check_labels(labels, x2, "error_binary")
    return ((x2 * c) < 0).sum().to(x2.dtype) / c.shape[1]


def error_multiclass(prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """our_cnn_train.m `error_multiclass` (top-1): the number of images whose top prediction
    (MATLAB's stable `sort(..., 'descend')`: first of equal maxima, NaN first) differs from the
    argmax of the labels."""
    x2 = as_2d(prediction).detach()
    c = _check_labels(labels, x2, "error_multiclass")
    isnan = torch.isnan(x2)
    top = torch.where(isnan.any(dim=1), isnan.to(torch.int8).argmax(dim=1),
                      torch.where(isnan, torch.full_like(x2, -torch.inf), x2).argmax(dim=1))
    return (top != c.argmax(dim=1)).sum().to(x2.dtype)
