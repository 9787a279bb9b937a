"""The training loop (S7, S8) and its safeguards.

One epoch = `samples_per_epoch` random crops drawn by the complexity sampler, in micro-batches of
`batch_size`, with gradients accumulated over `accumulate` micro-batches (the paper: 4 x 2 = 8),
clipped to norm `clip_grad`, AdamW, OneCycleLR stepped once per optimizer step.

After each epoch the model is scored on the whole validation images. Model selection follows the
paper's EMA of the validation Dice (eq. 6, alpha 0.9; `train.selection` offers a bias-corrected
EMA and a window mean instead), with one addition the paper only names:
an epoch whose score is a statistical outlier (robust z-score below -outlier_z against the median
and MAD of the last accepted epochs, and at least `outlier_min_drop` below that median) is
rejected: it never updates the EMA, is never selected, is reported in metrics.csv, and the run
restores the last accepted weights and lowers the learning rate, so a collapse like the paper's
92 % -> 13.66 % cannot poison the run. Non-finite losses or gradients skip the step; a streak of
them triggers the same restore.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from qmed import runtime
from qmed.config import QmedConfig, config_from_dict, dump_yaml
from qmed.data.batches import EpochDraws, LoadedPairs, TrainCrops, sampling_weights, to_rgb
from qmed.data.dataset import find_pairs, fingerprint, split_pairs
from qmed.data.objects import dataset_diameter
from qmed.data.sampling import hardness_weights
from qmed.data.stain import stain_target
from qmed.errors import QmedInputError
from qmed.io import checkpoints
from qmed.io.files import check_output, prepare_output_dir, write_json, write_text
from qmed.io.images import read_image
from qmed.models.common import count_parameters
from qmed.models.segmenter import build
from qmed.runtime import pick_device, seed_everything
from qmed.segment import trainstep
from qmed.segment.losses import loss_from_config, per_sample_dice_loss
from qmed.segment.trainstep import EpochTally
from qmed.segment.validate import validate

log = logging.getLogger("qmed")

CSV_FIELDS = [
    "epoch",
    "opt_steps",
    "lr",
    "train_loss",
    "loss_dice",
    "loss_bce",
    "loss_tversky",
    "bad_steps",
    "val_dice_empty1",
    "val_dice_fg",
    "val_dice_pooled",
    "val_iou_fg",
    "val_hd95",
    "val_small_recall",
    "val_fp_rate_empty",
    "val_score",
    "val_ema",
    "outlier",
    "selected",
    "restored",
    "epoch_seconds",
    "val_seconds",
    "crops",
]


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    opt_steps: int = 0
    val_ema: float | None = None
    best_ema: float = -math.inf
    accepted: list[float] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    bad_steps_total: int = 0
    lr_scale: float = 1.0
    events: list[str] = field(default_factory=list)
    # data.sampler=hard: running training loss per image (None = not drawn yet).
    hardness: list | None = None
    # train.budget_seconds: wall seconds of the loop so far (epochs, validation, checkpoints), and the
    # last epoch's bookkeeping (checkpoint and metrics writes), for re-planning.
    loop_seconds: float = 0.0
    record_seconds: float = 1.0


def is_outlier(score: float, history: list[float], window: int, z: float, min_drop: float) -> bool:
    """Robust z-score of `score` against the last `window` accepted scores (median / 1.4826 MAD).

    Needs 3 accepted epochs; a rise is never an outlier; a drop must exceed both `z` robust
    standard deviations and `min_drop` in absolute terms, so ordinary noise is not flagged."""
    recent = history[-window:]
    if len(recent) < 3 or not math.isfinite(score):
        return not math.isfinite(score) and len(recent) >= 1
    med = float(np.median(recent))
    mad = float(np.median(np.abs(np.asarray(recent) - med))) * 1.4826
    drop = med - score
    return drop > min_drop and drop > z * max(mad, 1e-3)


def validates(epoch: int, epochs: int, val_every: int = 1) -> bool:
    """Whether the trainer validates after `epoch` of `epochs`: every `val_every`-th epoch and the last."""
    return epoch % max(1, val_every) == 0 or epoch == epochs


def replan_samples(
    remaining_s: float,
    epoch: int,
    epochs: int,
    val_every: int,
    t_crop: float,
    t_val: float,
    overhead_s: float,
    batch_size: int,
    accumulate: int,
) -> int:
    """Crops per epoch for epochs epoch+1..epochs so that they, their validation passes (at t_val
    each) and their bookkeeping (overhead_s per epoch) fill `remaining_s`, at t_crop seconds per
    crop: a multiple of batch_size, at least one optimizer step's worth."""
    left = epochs - epoch
    vals = sum(validates(e, epochs, val_every) for e in range(epoch + 1, epochs + 1))
    train_s = remaining_s - vals * t_val - left * overhead_s
    micro = int(max(0.0, train_s) / max(left, 1) / max(t_crop * batch_size, 1e-9))
    return max(accumulate, micro) * batch_size


def selection_score(history: list[float], rule: str = "ema", alpha: float = 0.9, window: int = 3) -> float:
    """The smoothed validation score that selects best.pt, from the accepted epochs' scores (oldest
    first; outliers are never in it). "ema": e1 = s1, e_t = alpha e_(t-1) + (1 - alpha) s_t (paper
    eq. 6); "ema_debiased": the same sum started at 0, divided by 1 - alpha^t; "window": the mean of
    the last `window` scores. NaN for an empty history."""
    if not history:
        return float("nan")
    if rule == "window":
        return float(np.mean(history[-window:]))
    if rule == "ema_debiased":
        t = len(history)
        if alpha <= 0:
            return float(history[-1])
        e = sum((1 - alpha) * alpha ** (t - 1 - k) * s for k, s in enumerate(history))
        return float(e / (1 - alpha**t))
    if rule != "ema":
        raise ValueError(f"unknown selection rule {rule!r}")
    e = history[0]
    for s in history[1:]:
        e = alpha * e + (1 - alpha) * s
    return float(e)


# How the --force check names a run directory, and what else the user can do with one.
RUN_DIR = ("output directory", " or --resume to continue it")


def _file_logger(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


VAL_PER_IMAGE = "val_per_image.csv"  # epoch, image, Dice (empty = 1): each epoch's per-image validation scores


def record_val_per_image(path: Path, epoch: int, rows: list[dict]) -> None:
    """Replace epoch `epoch`'s (and any later epoch's: a resumed run redoes them) lines of PATH with
    `rows`' per-image Dice. Kept so that a model-selection rule can be judged on images it did not
    select on (benchmarks/selection_rules.py)."""
    kept = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            kept = [r for r in csv.DictReader(fh) if int(r["epoch"]) < epoch]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["epoch", "name", "dice_empty1"])
    w.writeheader()
    w.writerows(kept)
    w.writerows({"epoch": epoch, "name": r["name"], "dice_empty1": f"{r['dice_empty1']:.6g}"} for r in rows)
    write_text(path, buf.getvalue())


def _scale_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    # OneCycleLR recomputes lr from these each step, so scale them, not just 'lr'.
    for g in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in g:
                g[key] *= factor


class Trainer:
    def __init__(
        self,
        cfg: QmedConfig,
        train_source: str | Path,
        val_source: str | Path | None,
        out: str | Path,
        device: str | None = None,
        quiet: bool = False,
        tensorboard: bool = False,
        stop_after: int | None = None,
    ):
        self.tensorboard = tensorboard
        self.stop_after = stop_after
        self.tb = None
        self.cfg = cfg
        self.out = Path(out)
        self.device = pick_device(device)
        self.quiet = quiet
        self.train_source, self.val_source = Path(train_source), (Path(val_source) if val_source else None)

    def _inputs(self) -> list[Path]:
        """The data paths the run reads: --out may not overlap them (qmed.io.files.check_not_inputs)."""
        return [self.train_source, *([self.val_source] if self.val_source else [])]

    # -- setup ---------------------------------------------------------------------------------
    def load_data(self) -> None:
        cfg = self.cfg
        pairs = find_pairs(self.train_source)
        if self.val_source is not None:
            train_pairs, val_pairs = pairs, find_pairs(self.val_source)
        elif cfg.data.val_fraction == 0:
            train_pairs, val_pairs = pairs, []
            log.warning(
                "no --val and data.val_fraction=0: training on all %d images of %s without validation; "
                "the last epoch is the model",
                len(pairs),
                self.train_source,
            )
        else:
            if len(pairs) < 2:
                raise QmedInputError(
                    self.train_source,
                    f"holds {len(pairs)} image; training needs at least 2 (one for validation), a separate --val folder, or --set data.val_fraction=0",
                )
            train_pairs, val_pairs = split_pairs(
                pairs, cfg.data.val_fraction, cfg.data.split_seed, cfg.data.group_pattern
            )
            log.warning(
                "no --val given: validating on %d of %d images split off %s (seed %d)",
                len(val_pairs),
                len(pairs),
                self.train_source,
                cfg.data.split_seed,
            )
        if cfg.data.normalize == "reinhard" and cfg.data.stain_target is None:
            # the training images' typical stain, saved in the run's config for predict and export
            cfg.data.stain_target = tuple(stain_target(to_rgb(read_image(p.image)) for p in train_pairs))
            log.info(
                "Reinhard stain target (L*a*b* means, stds) from %d training images: %s",
                len(train_pairs),
                cfg.data.stain_target,
            )
        self.train_data = LoadedPairs(train_pairs, cfg, cache=cfg.data.cache)
        self.val_data = LoadedPairs(val_pairs, cfg, cache=cfg.data.cache)
        for data in (self.train_data, self.val_data):
            for i in range(len(data)):
                data[i]  # reads, checks sizes and (by default) caches every pair now
        self.weights, _ = sampling_weights(self.train_data, cfg)
        # Saved with the model for `predict.rescale`; measured on the binary masks (touching objects
        # merged) because that is all a first-pass prediction offers to compare it with.
        if cfg.predict.object_diameter is None:
            cfg.predict.object_diameter = dataset_diameter(self.train_data[i][1] for i in range(len(self.train_data)))
        n = cfg.data.samples_per_epoch or len(train_pairs)
        n = max(cfg.train.batch_size, n // cfg.train.batch_size * cfg.train.batch_size)
        self.crops = TrainCrops(self.train_data, cfg)
        self.draws = EpochDraws(self.weights, n, cfg.train.seed)
        self.loader = DataLoader(
            self.crops,
            batch_size=cfg.train.batch_size,
            sampler=self.draws,
            num_workers=cfg.train.num_workers,
            drop_last=True,
        )
        self.micro_per_epoch = n // cfg.train.batch_size

    def build_model(self, pretrained: bool) -> None:
        cfg = self.cfg
        seed_everything(cfg.train.seed)
        self.model = build(cfg.model, pretrained=pretrained).to(self.device).to(memory_format=torch.channels_last)
        self.loss_fn = loss_from_config(
            cfg.train, deep_supervision=cfg.model.deep_supervision, instance_head=cfg.model.instance_head
        )
        opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.train.accumulate)
        if cfg.train.schedule == "constant":
            # Chainable: keeps whatever lr the param groups hold, so _scale_lr's recovery cut sticks.
            self.total_steps = max(4, steps_per_epoch * cfg.train.epochs)
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)
        else:
            self._one_cycle(steps_per_epoch * cfg.train.epochs)
        self.ema_model = None
        if cfg.train.weight_ema:
            self.ema_model = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.weight_ema_decay), use_buffers=True
            )
        self.amp_dtype = runtime.autocast_dtype(self.device, cfg.train.amp, cfg.train.cpu_bf16)
        # Loss scaling only for float16; bfloat16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _one_cycle(self, total_steps: int, done: int = 0, lr_scale: float = 1.0) -> None:
        """self.scheduler: OneCycleLR over `total_steps`, already `done` steps into it (a re-plan
        rebuilds it over the new total; its lr is a closed form of the step, so it resumes exactly
        there), peak train.lr x lr_scale (a recovery's cut carries over)."""
        import warnings

        cfg = self.cfg
        # OneCycleLR needs each phase to span at least one step; tiny runs get a short warm-up.
        self.total_steps = max(4, total_steps)
        pct = min(max(cfg.train.warmup, 1.5 / self.total_steps), 0.5)
        div = 25.0
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=cfg.train.lr * lr_scale,
            total_steps=self.total_steps,
            pct_start=pct,
            anneal_strategy="cos",
            div_factor=div,
            final_div_factor=max(1.0, (cfg.train.lr / div) / cfg.train.final_lr),
            cycle_momentum=False,
        )
        if done:
            self.scheduler.last_epoch = min(done, self.total_steps - 1) - 1
            with (
                warnings.catch_warnings()
            ):  # "step() before optimizer.step()": the optimizer has stepped, under the old scheduler
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()

    def checkpoint_state(self, st: RunState) -> dict:
        return {
            "config": self.cfg.model_dump(),
            "model": self.model.state_dict(),
            "ema_model": self.ema_model.state_dict() if self.ema_model is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "run": st.__dict__,
        }

    # -- public --------------------------------------------------------------------------------
    def fit(self, resume: bool = False, force: bool = False) -> Path:
        out = self.out
        if resume:
            last = out / "checkpoints" / "last.pt"
            state = checkpoints.read(last)
            self.cfg = config_from_dict(state["config"], last)
            for stale in out.rglob(".*.tmp*"):  # a write cut short by a kill: the real file is intact
                stale.unlink()
        else:
            check_output(out, force, *RUN_DIR, inputs=self._inputs())
            state = None
        # Read and check every image before the run directory is touched: bad data fails fast and
        # leaves no half-made run behind.
        self.load_data()
        self.build_model(pretrained=state is None)
        if state is None:
            prepare_output_dir(out, force, ("checkpoints",), *RUN_DIR, inputs=self._inputs(), verb="train")
        handler = _file_logger(out)
        try:
            st = RunState()
            if state is not None:
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.total_steps = getattr(self.scheduler, "total_steps", self.total_steps)  # a re-plan's total
                self.scaler.load_state_dict(state["scaler"])
                if self.ema_model is not None and state.get("ema_model"):
                    self.ema_model.load_state_dict(state["ema_model"])
                st = RunState(**state["run"])
                log.info("resuming %s after epoch %d", out, st.epoch)
            else:
                write_text(out / "config.yaml", dump_yaml(self.cfg))
                # Without --val, the names split off --data for validation: the report scores those.
                split = None if self.val_source else [p.name for p in self.val_data.pairs]
                write_json(
                    out / "run.json",
                    {
                        "train": str(self.train_source.resolve()),
                        "val": str(self.val_source.resolve()) if self.val_source else None,
                        "val_split": split,
                        "device": str(self.device),
                        "torch": torch.__version__,
                    },
                )
                write_json(out / "fingerprint.json", fingerprint(self.train_data.pairs))
                log.info(
                    "train %d images, val %d images, %s on %s, %.2fM parameters",
                    len(self.train_data),
                    len(self.val_data),
                    self.cfg.model.encoder,
                    self.device,
                    count_parameters(self.model) / 1e6,
                )
            if self.tensorboard:
                self.tb = _tensorboard_writer(out)
            self._loop(st)
        finally:
            if self.tb is not None:
                self.tb.close()
            log.removeHandler(handler)
            handler.close()
        return out

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self, st: RunState) -> None:
        """Epochs from st.epoch + 1: train, validate and select, record; stops early on
        --stop-after-epochs (resumable, no summary) or train.max_minutes (finished)."""
        cfg = self.cfg
        good = self._snapshot(st)
        start = time.time()
        first_epoch = st.epoch + 1
        for epoch in range(first_epoch, cfg.train.epochs + 1):
            t0 = time.time()
            hard = self._begin_epoch(epoch, st)
            tally = self._train_epoch(epoch, st, good, hard)
            st.bad_steps_total += tally.bad
            row = {
                "epoch": epoch,
                "opt_steps": st.opt_steps,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": tally.mean("loss"),
                "loss_dice": tally.mean("dice"),
                "loss_bce": tally.mean("bce"),
                "loss_tversky": tally.mean("tversky"),
                "bad_steps": tally.bad,
                "outlier": 0,
                "selected": 0,
                "restored": tally.restored,
            }
            if len(self.val_data) and validates(epoch, cfg.train.epochs, cfg.train.val_every):
                tv = time.time()
                row["restored"] = self._validate_epoch(st, row, good) or tally.restored
                row["val_seconds"] = round(time.time() - tv, 2)
                if not row["outlier"]:
                    good = self._snapshot(st)
            elif not len(self.val_data) and not tally.bad:
                good = self._snapshot(st)  # no validation to accept an epoch: a clean epoch is the fallback
            row["epoch_seconds"] = round(time.time() - t0, 2)
            row["crops"] = self.micro_per_epoch * cfg.train.batch_size
            st.loop_seconds += time.time() - t0 + st.record_seconds  # this epoch's bookkeeping: the last one's time
            if cfg.train.budget_seconds and epoch < cfg.train.epochs:
                self._replan(st, row)  # before the checkpoint, so a resumed run carries the new plan
            t1 = time.time()
            self._record_epoch(st, row, hard)
            st.record_seconds = time.time() - t1
            if self.stop_after is not None and epoch - first_epoch + 1 >= self.stop_after and epoch < cfg.train.epochs:
                log.warning("stopping after epoch %d as asked; continue with: qmed train --resume %s", epoch, self.out)
                return
            if cfg.train.max_minutes is not None and (time.time() - start) / 60 > cfg.train.max_minutes:
                st.events.append(f"stopped after epoch {epoch}: max_minutes={cfg.train.max_minutes} reached")
                log.warning(st.events[-1])
                break
        self._finish(st)

    def _replan(self, st: RunState, row: dict) -> None:
        """Crops per epoch for the remaining epochs, from the measured pace, so the loop
        ends at train.budget_seconds with its schedule complete however the machine's speed drifts
        from the few-second calibration (sustained load, thermal limits, a neighbour's job). A
        change under 3 % is left alone; the one-cycle schedule is rebuilt over the new total."""
        cfg = self.cfg
        bs, acc = cfg.train.batch_size, cfg.train.accumulate
        crops = self.micro_per_epoch * bs
        # The median pace of the last three epochs: one fast or slow epoch should not swing the plan.
        paces = [
            (r["epoch_seconds"] - (r.get("val_seconds") or 0.0)) / r["crops"]
            for r in (st.rows + [row])[-3:]
            if r.get("crops")
        ]
        t_crop = float(np.median(paces))
        vals = [r["val_seconds"] for r in st.rows + [row] if r.get("val_seconds") is not None]
        if len(self.val_data) and not vals:
            return  # the remaining validation passes cannot be costed before one has run (val_every > 1)
        t_val = vals[-1] if vals else 0.0
        n = replan_samples(
            cfg.train.budget_seconds - st.loop_seconds,
            row["epoch"],
            cfg.train.epochs,
            cfg.train.val_every,
            t_crop,
            t_val,
            st.record_seconds,
            bs,
            acc,
        )
        if abs(n - crops) <= 0.03 * crops:
            return
        log.info(
            "re-planned after epoch %d: %d crops per epoch instead of %d (%.3fs per crop, median of the last epochs; %.0fs of %.0fs left)",
            row["epoch"],
            n,
            crops,
            t_crop,
            cfg.train.budget_seconds - st.loop_seconds,
            cfg.train.budget_seconds,
        )
        cfg.data.samples_per_epoch = n
        self.draws.num_samples = n
        self.micro_per_epoch = n // bs
        total = st.opt_steps + (cfg.train.epochs - row["epoch"]) * math.ceil(self.micro_per_epoch / acc)
        if cfg.train.schedule == "onecycle":
            self._one_cycle(total, done=st.opt_steps, lr_scale=st.lr_scale)
        else:  # a constant lr has nothing to rebuild; the step count still follows the plan
            self.total_steps = max(4, total)

    def _begin_epoch(self, epoch: int, st: RunState) -> np.ndarray | None:
        """Seed the epoch's crops and draws; with the hard sampler, weight the draws by the tracked
        per-image losses and return them (updated in place during the epoch)."""
        self.crops.epoch = self.draws.epoch = epoch
        if self.cfg.data.sampler != "hard":
            return None
        if st.hardness is None:
            st.hardness = [None] * len(self.train_data)
        hard = np.array([np.nan if h is None else h for h in st.hardness])
        self.draws.weights = hardness_weights(hard)
        return hard

    def _train_epoch(self, epoch: int, st: RunState, good: dict, hard: np.ndarray | None) -> EpochTally:
        self.model.train()
        tally = EpochTally()
        self.optimizer.zero_grad(set_to_none=True)
        bar = tqdm(
            self.loader,
            total=self.micro_per_epoch,
            desc=f"epoch {epoch}/{self.cfg.train.epochs}",
            leave=False,
            disable=self.quiet,
            dynamic_ncols=True,
        )
        for i, (x, y) in enumerate(bar):
            self._micro_batch(epoch, i, x, y, st, good, hard, tally)
            if tally.n_ok and i % 5 == 0:
                bar.set_postfix(
                    loss=f"{tally.mean('loss'):.4f}", val=_fmt(st.rows[-1].get("val_score")) if st.rows else "-"
                )
        bar.close()
        return tally

    def _micro_batch(
        self,
        epoch: int,
        i: int,
        x: torch.Tensor,
        y: torch.Tensor,
        st: RunState,
        good: dict,
        hard: np.ndarray | None,
        tally: EpochTally,
    ) -> None:
        """The step, and the run's part of its bookkeeping: `max_bad_steps` non-finite losses or
        gradients in a row restore the last accepted weights."""
        if self.train_step(i, x, y, tally, hard):
            st.opt_steps += 1
        if tally.streak >= self.cfg.train.max_bad_steps:
            tally.restored = self._restore(good, st, f"{tally.streak} non-finite steps in a row at epoch {epoch}")
            tally.streak = 0

    def train_step(
        self, i: int, x: torch.Tensor, y: torch.Tensor, tally: EpochTally, hard: np.ndarray | None = None
    ) -> bool:
        """Micro-batch i of the epoch through the one training step (qmed.segment.trainstep), with
        an optimizer step every `accumulate` micro-batches and at the epoch's end. Returns whether it stepped."""
        last_micro = (i + 1) % self.cfg.train.accumulate == 0 or i + 1 == self.micro_per_epoch
        track = None if hard is None else lambda logits, y: self._track_hardness(hard, i, logits[:, :1], y[:, :1])
        return trainstep.micro_step(self.step_parts(), x, y, last_micro, tally, on_logits=track)

    def step_parts(self) -> trainstep.StepParts:
        """The step's view of this trainer (built per call: a re-plan replaces the scheduler)."""
        cfg = self.cfg
        return trainstep.StepParts(
            self.model,
            self.loss_fn,
            self.optimizer,
            self.scaler,
            self.device,
            self.amp_dtype,
            cfg.train.accumulate,
            cfg.train.clip_grad,
            after_step=self._after_optimizer_step,
        )

    def _record_epoch(self, st: RunState, row: dict, hard: np.ndarray | None) -> None:
        """Append the epoch's row; write last.pt (and best.pt when selected), metrics.csv, TensorBoard, the log line."""
        out, epoch = self.out, row["epoch"]
        st.rows.append(row)
        st.epoch = epoch
        if hard is not None:
            st.hardness = [None if not np.isfinite(h) else float(h) for h in hard]
        checkpoints.save(out / "checkpoints" / "last.pt", self.checkpoint_state(st))
        if row["selected"]:
            shutil.copyfile(out / "checkpoints" / "last.pt", out / "checkpoints" / ".best.pt.tmp")
            (out / "checkpoints" / ".best.pt.tmp").replace(out / "checkpoints" / "best.pt")
        _write_csv(out / "metrics.csv", st.rows)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch" and math.isfinite(v):
                    self.tb.add_scalar(k, v, epoch)
        log.info(
            "epoch %d: loss %.4f, val dice %s (ema %s)%s%s, %.0fs",
            epoch,
            row["train_loss"],
            _fmt(row.get("val_score")),
            _fmt(row.get("val_ema")),
            " OUTLIER" if row["outlier"] else "",
            " best" if row["selected"] else "",
            row["epoch_seconds"],
        )

    def _finish(self, st: RunState) -> None:
        """best.pt (last.pt when no epoch was ever selected) and summary.json: the run is complete."""
        out = self.out
        if not (out / "checkpoints" / "best.pt").exists():
            shutil.copyfile(out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt")
        best_epoch = next((r["epoch"] for r in reversed(st.rows) if r["selected"]), None)
        # Without validation nothing is scored or selected: null (strict JSON), and the reason beside it.
        validated = math.isfinite(st.best_ema)
        write_json(
            out / "summary.json",
            {
                "epochs": st.epoch,
                "opt_steps": st.opt_steps,
                "crops": sum(r.get("crops", 0) for r in st.rows),
                "best_val_ema": st.best_ema if validated else None,
                "bad_steps": st.bad_steps_total,
                "events": st.events,
                "best_epoch": best_epoch,
                **(
                    {}
                    if validated
                    else {"selection": "no validation ran (no validation images); best.pt is the last epoch's weights"}
                ),
            },
        )

    def _snapshot(self, st: RunState) -> dict:
        """The last accepted state, kept in memory for recovery."""
        return copy.deepcopy(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "lr_scale": st.lr_scale}
        )

    def _track_hardness(self, hard: np.ndarray, i: int, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Running (EMA 0.5) per-image loss of micro-batch i's source images, for the next epoch's weights."""
        bs = self.cfg.train.batch_size
        for idx, loss in zip(self.draws.drawn[i * bs : (i + 1) * bs], per_sample_dice_loss(logits, y).tolist()):
            if np.isfinite(loss):
                hard[idx] = loss if not np.isfinite(hard[idx]) else 0.5 * hard[idx] + 0.5 * loss

    def _after_optimizer_step(self) -> None:
        """The schedule (up to its last step) and the weight EMA follow each optimizer step taken."""
        if self.scheduler.last_epoch + 1 < self.total_steps:
            self.scheduler.step()
        if self.ema_model is not None:
            self.ema_model.update_parameters(self.model)

    def _restore(self, good: dict, st: RunState, why: str) -> str:
        self.model.load_state_dict(good["model"])
        self.optimizer.load_state_dict(good["optimizer"])
        st.lr_scale *= self.cfg.train.recovery_lr_factor
        _scale_lr(self.optimizer, st.lr_scale / good["lr_scale"])
        self.optimizer.zero_grad(set_to_none=True)
        msg = f"{why}: restored the last accepted weights, learning rate x{st.lr_scale:g}"
        st.events.append(msg)
        log.warning(msg)
        return msg

    def _validate_epoch(self, st: RunState, row: dict, good: dict) -> str:
        cfg = self.cfg
        model = self.ema_model.module if self.ema_model is not None else self.model
        summary, per_image = validate(
            model,
            self.val_data,
            cfg,
            self.device,
            tta=cfg.predict.tta if cfg.train.val_tta else 1,
            cpu_bf16=cfg.train.cpu_bf16,
        )
        record_val_per_image(self.out / VAL_PER_IMAGE, row["epoch"], per_image)
        score = _nan_to(summary["dice_mean_empty1"]["mean"], 0.0)
        row.update(
            {
                "val_dice_empty1": summary["dice_mean_empty1"]["mean"],
                "val_dice_fg": summary["dice_mean_fg"]["mean"],
                "val_dice_pooled": summary["dice_pooled"],
                "val_iou_fg": summary["iou_mean_fg"]["mean"],
                "val_hd95": summary["hd95"]["mean"],
                "val_small_recall": summary["small_object_recall"],
                "val_fp_rate_empty": summary["fp_rate_empty"],
                "val_score": score,
            }
        )
        if is_outlier(score, st.accepted, cfg.train.outlier_window, cfg.train.outlier_z, cfg.train.outlier_min_drop):
            row["outlier"] = 1
            row["val_ema"] = st.val_ema
            return self._restore(
                good,
                st,
                f"validation outlier at epoch {row['epoch']} (Dice {score:.4f} vs recent median {np.median(st.accepted[-cfg.train.outlier_window :]):.4f})",
            )
        st.accepted.append(score)
        st.val_ema = selection_score(
            st.accepted, cfg.train.selection, cfg.train.val_ema_alpha, cfg.train.selection_window
        )
        row["val_ema"] = st.val_ema
        if st.val_ema > st.best_ema:
            st.best_ema = st.val_ema
            row["selected"] = 1
        return ""


def _tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise QmedInputError(None, "--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"))


def _nan_to(v, default: float) -> float:
    return default if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def train(
    cfg: QmedConfig,
    train_source,
    val_source,
    out,
    force: bool = False,
    device: str | None = None,
    quiet: bool = False,
    tensorboard: bool = False,
    stop_after: int | None = None,
) -> Path:
    """Train into run directory `out`. `stop_after`: leave after this many epochs (resumable)."""
    return Trainer(
        cfg, train_source, val_source, out, device=device, quiet=quiet, tensorboard=tensorboard, stop_after=stop_after
    ).fit(resume=False, force=force)


def resume(
    out,
    device: str | None = None,
    quiet: bool = False,
    train_source=None,
    val_source=None,
    tensorboard: bool = False,
    stop_after: int | None = None,
) -> Path:
    """Continue a run from checkpoints/last.pt; data folders default to those recorded in the run."""
    import json

    out = Path(out)
    meta_path = out / "run.json"
    if not meta_path.is_file():
        raise QmedInputError(out, "is not a qmed run directory (no run.json)")
    meta = json.loads(meta_path.read_text())
    cfg_state = checkpoints.read(out / "checkpoints" / "last.pt")["config"]
    cfg = config_from_dict(cfg_state, out / "checkpoints" / "last.pt")
    t = Trainer(
        cfg,
        train_source or meta["train"],
        val_source or meta.get("val"),
        out,
        device=device,
        quiet=quiet,
        tensorboard=tensorboard,
        stop_after=stop_after,
    )
    return t.fit(resume=True)
