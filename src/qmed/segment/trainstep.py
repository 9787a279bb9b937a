"""The training micro-step, written once: the trainer runs it, and so do the budget calibration behind
`qmed train --minutes` and `qmed benchmark speed`, so that what they time is what trains.

Forward, loss, backward through the GradScaler and (at the last micro-batch of an accumulation
group) the clipped optimizer step; a non-finite loss or gradient skips its micro-batch or step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from qmed import runtime
from qmed.segment.losses import main_logits


@dataclass
class EpochTally:
    """One epoch's running loss sums and step counters."""

    sums: dict = field(default_factory=lambda: {"loss": 0.0, "dice": 0.0, "bce": 0.0, "tversky": 0.0})
    n_ok: int = 0  # micro-batches with a finite loss
    bad: int = 0  # skipped micro-batches and optimizer steps
    streak: int = 0  # non-finite in a row
    pending: int = 0  # finite micro-batches since the last optimizer step
    restored: str = ""

    def mean(self, key: str) -> float:
        return self.sums[key] / max(1, self.n_ok)


@dataclass
class StepParts:
    """What a step works on. `after_step` runs after each optimizer step taken (the trainer's
    schedule and weight EMA); `channels_last` makes the input channels-last on the device."""

    model: torch.nn.Module
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    accumulate: int
    clip_grad: float | None
    after_step: Callable[[], None] | None = None
    channels_last: bool = True


def optimizer_step(p: StepParts) -> bool:
    """Clip and step; a non-finite gradient skips the step. Returns whether it stepped."""
    p.scaler.unscale_(p.optimizer)
    params = [q for q in p.model.parameters() if q.grad is not None]
    if not params:
        p.optimizer.zero_grad(set_to_none=True)
        return False
    # clipping at infinity still yields the norm: a non-finite gradient is found with or without clipping
    norm = torch.nn.utils.clip_grad_norm_(params, p.clip_grad if p.clip_grad else float("inf"))
    if not torch.isfinite(norm):
        p.optimizer.zero_grad(set_to_none=True)
        p.scaler.update()
        return False
    p.scaler.step(p.optimizer)
    p.scaler.update()
    p.optimizer.zero_grad(set_to_none=True)
    if p.after_step is not None:
        p.after_step()
    return True


def micro_step(
    p: StepParts,
    x: torch.Tensor,
    y: torch.Tensor,
    last_micro: bool,
    tally: EpochTally,
    on_logits: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> bool:
    """One micro-batch: forward, loss, backward; at `last_micro` the optimizer step (when any
    micro-batch since the last one was finite). A non-finite loss skips the micro-batch. `on_logits`
    sees the main logits and targets (the trainer's hardness tracking). Returns whether it stepped."""
    x, y = x.to(p.device, non_blocking=True), y.to(p.device, non_blocking=True)
    if p.channels_last:
        x = runtime.channels_last(x)
    with runtime.autocast(p.device, p.amp_dtype):
        outputs = p.model(x)
    # model.deep_supervision: outputs = (main, *auxiliary), all weighed by the loss; the rest uses the
    # main logits' foreground channel (model.instance_head=contact adds a second one).
    logits = main_logits(outputs)
    loss = p.loss_fn(logits.float() if outputs is logits else outputs, y)
    if on_logits is not None:
        on_logits(logits, y)
    if not torch.isfinite(loss):
        tally.bad += 1
        tally.streak += 1
        p.optimizer.zero_grad(set_to_none=True)
    else:
        p.scaler.scale(loss / p.accumulate).backward()
        tally.n_ok += 1
        tally.pending += 1
        tally.sums["loss"] += float(loss.detach())
        for k in ("dice", "bce", "tversky"):
            tally.sums[k] += float(getattr(p.loss_fn, "last", {}).get(k, float("nan")))
    stepped = False
    if last_micro and tally.pending:
        tally.pending = 0
        if optimizer_step(p):
            stepped = True
            tally.streak = 0 if torch.isfinite(loss) else tally.streak
        else:
            tally.bad += 1
            tally.streak += 1
    elif last_micro:
        p.optimizer.zero_grad(set_to_none=True)
    return stepped
