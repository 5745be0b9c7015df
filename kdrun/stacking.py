"""Models of one architecture trained as one: the students (and teachers) of a sweep.

A sweep over a loss's settings trains many students that share their architecture, initial
weights and batches. ``fit_stacked`` trains K such models in one loop: their weights are stacked
along a first dimension (a Linear layer's as ``[K, in, out]``), so a step is one batched matrix
product per layer for all of them (a convolution's: one grouped convolution, the K models'
feature maps side by side in the channels), a loss per model (KD's for the whole stack at once:
``KDLoss.stacked``), one backward pass and one optimiser step over the stacked tensors. Adam and
SGD act on each element alone, so each model's trajectory is the one it has trained alone, up to
rounding.

What each model keeps as its own, so that its results are those of its run alone:
- its loss (``None``: cross-entropy, the baseline's and the teacher's);
- its batch order (a generator seeded with its ``batch_seed``): models that share a seed read the
  same batch, the others a batch each;
- its dropout masks: each stream of batches has torch's random state of its own, set before the
  step's masks are drawn, so the masks are the ones the model's run alone draws;
- its batch-norm running statistics (each channel's are its model's own);
- its teacher targets, rows, metrics rows, best epoch, and a NaN: a model whose loss stops being
  finite is stopped (``Member.error``) while the others go on.

Stackable: ``kdrun.models.MLP``, ``CNN`` and ``LeNet5``, and any ``nn.Sequential`` of Linear
layers, 2-d convolutions, batch norm, pooling, element-wise activations, dropout (on flat
features) and flattening. ``stack_reason`` says why another model is not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.checkpoints import Checkpoint
from kdrun.data import Split
from kdrun.errors import NonFiniteLossError
from kdrun.models.cnn import CNN
from kdrun.models.lenet import LeNet5
from kdrun.models.mlp import MLP
from kdrun.optim import FusedAdam, make_optimizer, set_learning_rate
from kdrun.train import EVAL_BATCH, FitSettings, autocast, loss_and_parts, row_columns, training_state

_ACTIVATIONS: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.ReLU: F.relu, nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid, nn.SiLU: F.silu, nn.Identity: lambda x: x,
}  # fmt: skip


def _modules(model: nn.Module) -> Optional[list[Any]]:
    """The model's layers in the order its forward runs them ("mean": a CNN's global average of
    each channel), or None for a model whose forward kdrun does not know."""
    if isinstance(model, MLP):
        return [nn.Flatten(), *model.network]
    if type(model) is CNN:
        return [*(layer for stage in model.stages for layer in stage), "mean", model.dropout, model.head]
    if type(model) is LeNet5:
        return [*(layer for stage in model.stages for layer in stage), nn.Flatten(), *model.classifier]
    if type(model) is nn.Sequential:
        return list(model)
    return None


def _layers(model: nn.Module) -> tuple[Optional[list[tuple]], str]:
    """The model as a list of steps (("linear", has_bias), ("conv", has_bias, stride, padding,
    dilation, groups), ("norm", eps, momentum), ("pool", fn, kwargs), ("act", fn), ("dropout", p),
    ("flatten",), ("mean",)), or None and why it is not one."""
    modules = _modules(model)
    if modules is None:
        return None, f"{type(model).__name__} is not a kdrun MLP, CNN or LeNet5, or an nn.Sequential of layers that stack"
    steps: list[tuple] = []
    maps = None  # whether the layer's input is feature maps [B, C, H, W] (None: not known yet)
    for module in modules:
        kind = type(module)
        if module == "mean" or (kind is nn.Flatten and module.start_dim == 1 and module.end_dim == -1):
            steps.append(("mean",) if module == "mean" else ("flatten",))
            maps = False
        elif kind is nn.Linear and not maps:
            steps.append(("linear", module.bias is not None))
            maps = False
        elif kind is nn.Conv2d and maps is not False and module.padding_mode == "zeros" and isinstance(module.padding, tuple):
            steps.append(("conv", module.bias is not None, module.stride, module.padding, module.dilation, module.groups))
            maps = True
        elif kind is nn.BatchNorm2d and maps is not False:
            if not (module.affine and module.track_running_stats and module.momentum is not None):
                return None, "it has a BatchNorm2d without affine weights, running statistics or a momentum"
            steps.append(("norm", module.eps, module.momentum))
            maps = True
        elif kind in (nn.MaxPool2d, nn.AvgPool2d) and maps is not False:
            names = ("kernel_size", "stride", "padding", "ceil_mode") + (("dilation",) if kind is nn.MaxPool2d else ("count_include_pad", "divisor_override"))
            steps.append(("pool", F.max_pool2d if kind is nn.MaxPool2d else F.avg_pool2d, {n: getattr(module, n) for n in names}))
            maps = True
        elif kind is nn.AdaptiveAvgPool2d and maps is not False:
            steps.append(("pool", F.adaptive_avg_pool2d, {"output_size": module.output_size}))
            maps = True
        elif kind in _ACTIVATIONS:
            steps.append(("act", _ACTIVATIONS[kind]))
        elif kind is nn.GELU and module.approximate == "none":
            steps.append(("act", F.gelu))
        elif kind is nn.Dropout and maps is False:  # the stack draws masks of flat features
            steps.append(("dropout", module.p))
        else:
            where = " on feature maps" if maps else " on flat features" if maps is False else " before any Linear, convolution or flattening"
            return None, f"it has a {kind.__name__} layer{where}; Linear layers, 2-d convolutions, batch norm, pooling, activations and dropout stack"
    if len(list(model.buffers())) != 3 * sum(step[0] == "norm" for step in steps):
        return None, "it has buffers other than batch norm's running statistics"
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):  # a loss's setup reads its layers so
        return None, "its layers have forward hooks (set by the model or the loss's setup), which a stacked model would never call"
    return steps, ""


def stack_reason(model: nn.Module) -> Optional[str]:
    """None if ``model`` can be trained stacked with others of its architecture; else why not."""
    steps, why = _layers(model)
    return None if steps is not None else why


class StackedModels:
    """K models of one architecture as stacked tensors, one per parameter and buffer: ``[K, *shape]``,
    a Linear layer's weight transposed (``[K, in, out]``: its batched products and their gradients
    run about 1.1-1.6x faster so on a 2-core x86 CPU than with ``[K, out, in]``).

    Between layers the K models' activations are either rows ``[K, B, features]`` or feature maps
    side by side in the channels, ``[B, K * C, H, W]``, model k's in channels k*C to (k+1)*C - 1:
    a convolution is then one convolution with K times its groups, and batch norm, pooling and
    activations act on each channel alone, as on each model's own."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        steps, why = _layers(models[0])
        if steps is None:
            raise ValueError(f"cannot stack {type(models[0]).__name__}: {why}")
        self.steps, self.k = steps, len(models)
        self.names = [name for name, _ in models[0].named_parameters()]
        self.transposed = [p.dim() == 2 for _, p in models[0].named_parameters()]  # the Linear weights
        self.params = [
            torch.stack([(lambda p: p.t() if flip else p)(dict(m.named_parameters())[name].detach()) for m in models]).contiguous().requires_grad_()
            for name, flip in zip(self.names, self.transposed)
        ]  # fmt: skip
        self.buffer_names = [name for name, _ in models[0].named_buffers()]  # batch norm's, 3 a layer
        self.buffers = [torch.stack([dict(m.named_buffers())[name] for m in models]).contiguous() for name in self.buffer_names]

    def forward(self, x: torch.Tensor, stream_of: Optional[torch.Tensor] = None,
                masks: Optional[Callable[[int, int, float], torch.Tensor]] = None, training: bool = False) -> torch.Tensor:  # fmt: skip
        """Logits ``[K, B, classes]``. ``x``: one batch ``[B, ...]`` every model reads, or one per
        stream ``[S, B, ...]``, ``stream_of[k]`` the stream of model k. ``masks(rows, width, p)``:
        each stream's dropout mask ``[S, rows, width]`` (training; None: no dropout).
        ``training``: batch norm normalises with the batch's statistics and updates its running
        ones, as in train mode."""
        h, layout, params, buffers = x, "shared", iter(self.params), iter(self.buffers)
        for kind, *rest in self.steps:
            if kind in ("flatten", "mean"):
                if layout == "maps":  # [B, K*C, H, W] -> [B, K, C, H, W] -> each model's rows [K, B, features]
                    h = h.reshape(h.shape[0], self.k, -1, *h.shape[2:])
                    h = (h.flatten(2) if kind == "flatten" else h.mean(dim=(3, 4))).transpose(0, 1)
                    layout = "rows"
                elif kind == "flatten":
                    h = h.flatten(1 if stream_of is None and layout == "shared" else 2)
                else:
                    h = h.mean(dim=(-2, -1))
            elif kind == "linear":
                if layout == "shared":  # each model's rows: the one batch, or its stream's
                    h = h.expand(self.k, *h.shape) if stream_of is None else h[stream_of]
                    layout = "rows"
                weight = next(params)
                h = torch.baddbmm(next(params).unsqueeze(1), h, weight) if rest[0] else torch.bmm(h, weight)
            elif kind == "conv":
                has_bias, stride, padding, dilation, groups = rest
                weight = next(params)
                bias = next(params).flatten() if has_bias else None
                if layout == "shared" and stream_of is None and groups == 1:  # every model's maps from the one batch at once
                    h = F.conv2d(h, weight.flatten(0, 1), bias, stride, padding, dilation)
                else:
                    h = F.conv2d(self._maps(h, layout, stream_of), weight.flatten(0, 1), bias, stride, padding, dilation, self.k * groups)
                # Batch norm, activations and pooling of maps with many channels run 2-6x faster so
                # on a 2-core x86 CPU, and the next convolution no slower.
                h, layout = h.contiguous(memory_format=torch.channels_last), "maps"
            elif kind == "norm":
                h, layout = self._maps(h, layout, stream_of), "maps"
                mean, var, count = next(buffers), next(buffers), next(buffers)
                eps, momentum = rest
                h = F.batch_norm(h, mean.view(-1), var.view(-1), next(params).flatten(), next(params).flatten(), training, momentum, eps)
                if training:
                    count.add_(1)
            elif kind == "pool":
                if layout == "shared" and stream_of is not None:
                    h, layout = self._maps(h, layout, stream_of), "maps"
                h = rest[0](h, **rest[1])
            elif kind == "act":
                h = rest[0](h)
            elif masks is not None:  # dropout, training
                mask = masks(h.shape[-2], h.shape[-1], rest[0])
                if layout == "rows":
                    h = h * (mask if stream_of is None else mask[stream_of])
                else:
                    h = h * (mask[0] if stream_of is None else mask)
        return h

    def _maps(self, h: torch.Tensor, layout: str, stream_of: Optional[torch.Tensor]) -> torch.Tensor:
        """Feature maps ``[B, K*C, H, W]`` from ``h``, already such, or the shared batch (or streams)."""
        if layout == "maps":
            return h
        if stream_of is None:
            maps = h.repeat(1, self.k, 1, 1)
        else:
            per_model = h[stream_of]  # [K, B, C, H, W]
            maps = per_model.transpose(0, 1).reshape(per_model.shape[1], -1, *per_model.shape[3:])
        return maps.contiguous(memory_format=torch.channels_last)  # as the convolutions leave them: see forward

    def predict(self, x: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Every model's logits ``[K, N, classes]`` for rows ``x``, as in eval mode, in chunks of
        rows x models no larger than one model's alone (``kdrun.train.predict``)."""
        rows = max(1, EVAL_BATCH // self.k)
        with torch.no_grad():
            return torch.cat([self.forward(prepare(x[i : i + rows])) for i in range(0, len(x), rows)], dim=1)

    def unstacked(self, tensor: torch.Tensor, j: int, k: int) -> torch.Tensor:
        """Model k's part of ``tensor`` (parameter j's, or its optimiser state's), in the model's layout."""
        return (tensor[k].t() if self.transposed[j] else tensor[k]).detach().clone()

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        state = {name: self.unstacked(p, j, k) for j, (name, p) in enumerate(zip(self.names, self.params))}
        return {**state, **{name: b[k].clone() for name, b in zip(self.buffer_names, self.buffers)}}


@dataclass
class Member:
    """One model of a stack and what it keeps as its own."""

    name: str  # its metrics rows' model name: teacher, distilled, baseline
    model: nn.Module  # its initial weights; it ends with its trained (or best_val) weights
    batch_seed: int  # its batch order, as FitSettings.batch_seed
    rng_state: torch.Tensor  # torch's CPU random state its dropout masks start from
    loss: Optional[Callable[..., Any]] = None  # None: cross-entropy with the labels
    targets: Any = None  # the loss's teacher targets for every row of the training split
    use_labels: bool = True
    checkpoint: Optional[Checkpoint] = None
    on_epoch: Callable[[dict], None] = lambda row: None
    history: list[dict] = field(default_factory=list)
    error: Optional[Exception] = None  # what stopped it (a non-finite loss)
    seconds: float = 0.0  # its share of the stack's training time


class _Streams:
    """The distinct batch streams of a stack: each a batch order and torch's random state for its
    dropout masks, as the run of any of its models alone has them."""

    def __init__(self, members: Sequence[Member], device: torch.device) -> None:
        keys: dict[tuple, int] = {}
        self.of_member = [keys.setdefault((m.batch_seed, m.rng_state.numpy().tobytes()), len(keys)) for m in members]
        firsts = [members[self.of_member.index(s)] for s in range(len(keys))]
        self.generators = [torch.Generator().manual_seed(m.batch_seed) for m in firsts]
        self.rng = [{"cpu": m.rng_state.clone()} for m in firsts]
        if device.type == "cuda":  # a stream's CUDA state starts as the device's, as alone
            for state in self.rng:
                state["cuda"] = torch.cuda.get_rng_state(device)
        self.index = torch.tensor(self.of_member, device=device) if len(keys) > 1 else None
        self.device = device

    def masks(self, rows: int, width: int, p: float) -> torch.Tensor:
        """Each stream's next dropout mask ``[S, rows, width]``: dropout of a tensor of ones, drawn
        from the stream's random state as its model alone draws it."""
        drawn = []
        for state in self.rng:
            self.enter(state)
            drawn.append(F.dropout(torch.ones(rows, width, device=self.device), p, training=True))
            self._keep(state)
        return torch.stack(drawn)

    def enter(self, state: dict[str, torch.Tensor]) -> None:
        """Make ``state`` (a stream's, or one saved before) torch's random state."""
        torch.set_rng_state(state["cpu"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def _keep(self, state: dict[str, torch.Tensor]) -> None:
        """Record where torch's random state got to as the stream's."""
        state["cpu"] = torch.get_rng_state()
        if "cuda" in state:
            state["cuda"] = torch.cuda.get_rng_state(self.device)


class _Losses:
    """The members' losses for a whole step: the cross-entropy members in one call, the members
    whose loss class offers ``stacked`` (kdrun.losses.KDLoss) in one call per class and setting
    of labels, the others one by one. Each group's values per batch: ``[members, 1 + parts]``."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.groups: list[dict[str, Any]] = []
        batched: dict[tuple, list[int]] = {}
        for i, m in enumerate(members):
            if m.loss is None:
                batched.setdefault(("ce",), []).append(i)
            elif callable(getattr(type(m.loss), "stacked", None)):
                batched.setdefault((type(m.loss), m.use_labels, _structure(m.targets)), []).append(i)
            else:
                self.groups.append(self._group([i], members, None))
        for key, indices in batched.items():
            losses = [members[i].loss for i in indices]
            forward = _cross_entropy if key == ("ce",) else type(losses[0]).stacked(losses)
            if forward is None:
                self.groups += [self._group([i], members, None) for i in indices]
            else:
                self.groups.append(self._group(indices, members, forward))

    @staticmethod
    def _group(indices: list[int], members: Sequence[Member], forward: Optional[Callable]) -> dict[str, Any]:
        first = members[indices[0]]
        columns, rebuild = row_columns(first.targets) if first.loss is not None else ([], None)
        if forward is not None and columns:  # [members, rows, ...]
            columns = [torch.stack(stacked) for stacked in zip(*(row_columns(members[i].targets)[0] for i in indices))]
        return {"indices": indices, "forward": forward, "loss": first.loss, "use_labels": first.use_labels,
                "columns": columns, "rebuild": rebuild, "parts": None}  # fmt: skip

    def start_epoch(self, orders: Sequence[torch.Tensor], stream_of: Sequence[int], batch_size: int) -> None:
        """Each group's targets in its members' orders of this epoch, split into batches."""
        for group in self.groups:
            indices = group["indices"]
            if group["forward"] is None:
                order = orders[stream_of[indices[0]]]
                group["batches"] = [c.index_select(0, order).split(batch_size) for c in group["columns"]]
            else:
                member_orders = torch.stack([orders[stream_of[i]] for i in indices])  # [g, n]
                group["batches"] = [_gather_rows(c, member_orders).split(batch_size, dim=1) for c in group["columns"]]

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, b: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The step's total loss and, per group, its members' values ``[g, 1 + parts]``."""
        total, values = None, []
        for group in self.groups:
            indices, targets = group["indices"], [column[b] for column in group["batches"]]
            y = labels[indices] if group["use_labels"] else None
            if group["forward"] is None:
                (i,) = indices
                result = group["loss"](logits[i], group["rebuild"](targets), y[0] if y is not None else None)
                loss, parts, group["parts"] = loss_and_parts(result, group["parts"], group["loss"])
                row = torch.stack([loss, *parts]).unsqueeze(0)
            else:
                result = group["forward"](logits[indices], group["rebuild"](targets) if group["rebuild"] else None, y)
                if group["parts"] is None:
                    loss_and_parts({k: v[0] for k, v in result.items()}, None, group["loss"])  # the same checks as alone
                    group["parts"] = [name for name in result if name != "loss"]
                loss = result["loss"]
                row = torch.stack([loss, *(result[name] for name in group["parts"])], dim=1)
            total = loss.sum() if total is None else total + loss.sum()
            values.append(row.detach())
        return total, values


def _structure(targets: Any) -> tuple:
    """Which fields of a loss's targets are present: members stack only with equal structures."""
    if targets is None or isinstance(targets, torch.Tensor):
        return (targets is None,)
    return tuple(value is None for value in targets)


def _gather_rows(column: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """``column[g]`` (``[g, n, ...]``) in ``orders[g]``'s order of rows, for each member g."""
    index = orders.view(*orders.shape, *([1] * (column.dim() - 2))).expand(-1, -1, *column.shape[2:])
    return column.gather(1, index)


def _cross_entropy(logits: torch.Tensor, targets: Any, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"loss": F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(dim=1)}


def fit_stacked(members: Sequence[Member], train: Split, val: Split, settings: FitSettings,
                prepare: Callable[[torch.Tensor], torch.Tensor]) -> None:  # fmt: skip
    """Train the members (one architecture, the same ``settings`` but their batch seeds) together
    on ``train``, each as ``kdrun.train.fit`` trains it alone: its metrics rows in
    ``member.history`` (and ``member.on_epoch``), its weights back in ``member.model``, a
    non-finite loss in ``member.error``. Checkpoints are written in ``fit``'s format, so that an
    interrupted member continues alone."""
    device, k = train.x.device, len(members)
    n, batch_size = len(train), settings.batch_size
    stack, streams, losses = StackedModels([m.model for m in members]), _Streams(members, device), _Losses(members)
    labels = train.y.long()
    optimizer = make_optimizer(stack.params, settings.optimizer, settings.lr, settings.weight_decay, settings.momentum, settings.nesterov)
    batch_sizes = torch.tensor([min(batch_size, n - start) for start in range(0, n, batch_size)], device=device)
    best: list[Optional[dict]] = [None] * k
    masks = streams.masks if any(step[0] == "dropout" for step in stack.steps) else None
    saved_rng = torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    started_all = time.perf_counter()
    try:
        for epoch in range(1, settings.epochs + 1):
            started = time.perf_counter()
            set_learning_rate(optimizer, settings.learning_rate(epoch))
            for m in members:
                if hasattr(m.loss, "set_epoch"):
                    m.loss.set_epoch(epoch, settings.epochs)
            orders = [torch.randperm(n, generator=g).to(device) for g in streams.generators]
            x_batches = [train.x.index_select(0, order).split(batch_size) for order in orders]
            y_in_order = torch.stack([labels.index_select(0, order) for order in orders])  # [S, n]
            y_members = y_in_order[streams.index] if streams.index is not None else y_in_order.expand(k, -1)
            y_batches = y_members.split(batch_size, dim=1)
            losses.start_epoch(orders, streams.of_member, batch_size)
            recorded: list[list[torch.Tensor]] = []  # per batch: each group's values
            outputs = []
            for b in range(len(batch_sizes)):
                x = prepare(x_batches[0][b] if streams.index is None else torch.stack([batches[b] for batches in x_batches]))
                with autocast(device, settings.precision):
                    logits = stack.forward(x, streams.index, masks, training=True)
                    total, values = losses(logits, y_batches[b], b)
                recorded.append(values)
                outputs.append(logits.detach())
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
            seconds = (time.perf_counter() - started) / k
            _end_epoch(members, stack, losses, epoch, settings, recorded, torch.cat(outputs, dim=1), y_members, batch_sizes,
                       val, prepare, best, seconds, optimizer, streams)  # fmt: skip
            if all(m.error is not None for m in members):
                break
    finally:
        torch.set_rng_state(saved_rng)
        if saved_cuda is not None:
            torch.cuda.set_rng_state(saved_cuda, device)
    for i, m in enumerate(members):
        m.model.load_state_dict(best[i]["weights"] if best[i] is not None else stack.state_dict(i))
        m.seconds = (time.perf_counter() - started_all) / k


def _end_epoch(members: Sequence[Member], stack: StackedModels, losses: _Losses, epoch: int, settings: FitSettings,
               recorded: list[list[torch.Tensor]], logits: torch.Tensor, labels: torch.Tensor, batch_sizes: torch.Tensor,
               val: Split, prepare: Callable[[torch.Tensor], torch.Tensor], best: list[Optional[dict]], seconds: float,
               optimizer: Any, streams: "_Streams") -> None:  # fmt: skip
    """Each member's metrics row for ``epoch``, as ``fit`` makes it, read back in one host sync;
    a member whose loss is not finite stops with its error."""
    k, n = len(members), logits.shape[1]
    stats, widths = [], []
    for g, group in enumerate(losses.groups):
        per_batch = torch.stack([values[g] for values in recorded])  # [batches, members, 1 + parts]
        per_batch = per_batch.to(torch.promote_types(per_batch.dtype, torch.float32))
        stats.append(torch.einsum("b,bmp->mp", batch_sizes.to(per_batch.dtype), per_batch).flatten().double())
        widths.append(per_batch.shape[2])
    stats.append((logits.argmax(-1) == labels).sum(-1).double())
    if len(val):
        val_logits = stack.predict(val.x, prepare)
        val_loss = F.cross_entropy(val_logits.transpose(1, 2).float(), val.y.expand(k, -1), reduction="none").mean(-1)
        stats += [val_loss.double(), (val_logits.argmax(-1) == val.y).sum(-1).double()]
    values = torch.cat(stats).tolist()
    sums: dict[int, list[float]] = {}
    at = 0
    for group, width in zip(losses.groups, widths):
        for i in group["indices"]:
            sums[i], at = values[at : at + width], at + width
    correct, val_values = values[at : at + k], values[at + k :]
    names = {i: group["parts"] or [] for group in losses.groups for i in group["indices"]}
    for i, m in enumerate(members):
        if m.error is not None:
            continue
        train_loss = sums[i][0] / n
        broken = [(name, value / n) for name, value in zip(names[i], sums[i][1:]) if not math.isfinite(value)]
        if broken:  # named before the total it makes non-finite
            m.error = NonFiniteLossError(m.name, epoch, settings.epochs, broken[0][1], part=broken[0][0])
            continue
        if not math.isfinite(train_loss):
            m.error = NonFiniteLossError(m.name, epoch, settings.epochs, train_loss)
            continue
        if len(val) and not math.isfinite(val_values[i]):  # the epoch's last steps broke the weights
            m.error = NonFiniteLossError(m.name, epoch, settings.epochs, val_values[i], split="validation")
            continue
        row = {"model": m.name, "epoch": epoch, "train_loss": train_loss}
        row.update((name, value / n) for name, value in zip(names[i], sums[i][1:]))
        row.update(
            train_acc=round(correct[i]) / n,
            val_loss=val_values[i] if len(val) else math.nan,
            val_acc=round(val_values[k + i]) / len(val) if len(val) else math.nan,
            seconds=seconds,
        )
        m.history.append(row)
        m.on_epoch(row)
        if settings.report == "best_val" and (best[i] is None or row["val_acc"] > best[i]["val_acc"]) and not math.isnan(row["val_acc"]):
            best[i] = {"epoch": epoch, "val_acc": row["val_acc"], "weights": stack.state_dict(i)}
        if m.checkpoint is not None and m.checkpoint.due(epoch, settings.epochs):
            m.checkpoint.save(_member_state(m, i, stack, streams, epoch, settings, optimizer, best[i]))


def _member_state(m: Member, i: int, stack: StackedModels, streams: _Streams, epoch: int, settings: FitSettings,
                  optimizer: Any, best: Optional[dict]) -> dict[str, Any]:  # fmt: skip
    """Member ``i``'s training state in ``fit``'s checkpoint format: its weights, its slice of the
    optimiser's state, its stream's batch order and random state."""
    m.model.load_state_dict(stack.state_dict(i))
    own = make_optimizer(m.model.parameters(), settings.optimizer, settings.lr, settings.weight_decay, settings.momentum, settings.nesterov)
    if isinstance(optimizer, FusedAdam):
        for mine, theirs in ((own.exp_avgs, optimizer.exp_avgs), (own.exp_avg_sqs, optimizer.exp_avg_sqs)):
            for j, (a, b) in enumerate(zip(mine, theirs)):
                a.copy_(stack.unstacked(b, j, i))
        own.step_count.copy_(optimizer.step_count)
    else:  # torch.optim: tensors of the stacked parameter's shape are sliced, step counts copied
        for j, (p, stacked) in enumerate(zip(m.model.parameters(), stack.params)):
            own.state[p] = {key: stack.unstacked(value, j, i) if torch.is_tensor(value) and value.shape == stacked.shape else value
                            for key, value in optimizer.state.get(stacked, {}).items()}  # fmt: skip
    set_learning_rate(own, settings.learning_rate(epoch))
    stream = streams.of_member[i]
    held = {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state(streams.device)} if streams.device.type == "cuda" else {})}
    streams.enter(streams.rng[stream])  # the random state training_state records: the stream's
    try:
        return training_state(epoch, settings.epochs, m.model, own, None, streams.generators[stream], None, None,
                              streams.device, list(m.history), best)  # fmt: skip
    finally:
        streams.enter(held)
