"""`qmed benchmark speed`: what the recipe costs, measured against a bare smp step.

For a preset at a given crop size and batch, on CPU or CUDA:

* train step, bare: smp UNet++ with the preset's encoder, decoder and SCSE attention on the
  3-channel (ImageNet-normalised) image, plain Dice + BCE, Adam, one optimizer step per batch;
  data = uniform image draw, random crop, flips and 90-degree rotations (the smp baseline of
  `qmed benchmark quality`).
* train step, recipe: qmed's model (Gabor edge channel -> 4->3 projection -> the same smp net),
  the preset's loss (`train.loss`: Algorithm 1 in `paper`, Dice + BCE in `cpu`), AdamW with the
  preset's accumulation and clipping; data = the complexity
  sampler's draw + crop + the full augmentation (elastic, brightness/contrast).
  Both run the trainer's own micro-step (qmed.segment.trainstep, with its non-finite guard; without
  the trainer's schedule and weight EMA), so a change to the training loop shows here.
* the recipe's parts, each timed alone on the same batch and device: edge channel (GaborEdge
  forward), projection (forward + backward), data pipeline per batch (recipe vs bare), loss
  (the preset's vs Dice + BCE, forward + backward). Each is reported as a share of the recipe step
  and as a fraction of the bare step; "rest" is what the parts do not explain (optimizer, clipping,
  accumulation, measurement noise).
* inference: the recipe model without and with 7-fold dihedral TTA, and the bare net, in eval mode
  under no_grad (qmed.segment.predict's own view loop).

Timing: every measured task (data pipelines, the two train steps, the parts, the inference modes)
is set up and run `warmup` times first, uncounted; then all tasks are timed round-robin for `steps`
rounds (the TTA inference every other round), each call between torch.cuda.synchronize() calls on
CUDA, with time.perf_counter; each task's figure is its median. Round-robin makes a change in the
machine's speed (other jobs, clock boost) touch every task alike; the median drops a call that lost
the CPU. The recipe's train step is timed per accumulation group (its `accumulate` micro-batches,
one optimizer step) divided by the group size. Data are
prepared on the CPU in the main process (qmed trains with num_workers=0), so a train step's time
is data + compute. Models are randomly initialised (weights do not change the speed; no download).

Peak memory per task, over its set-up (model and optimizer creation for the train steps) and its
warm-up calls: on CUDA torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats()
(tensors only: the caching allocator's reserve, max_memory_reserved, is reported beside it, and the
CUDA context, some hundreds of MB, is not counted). On CPU the process's peak resident set (VmHWM
from /proc/self/status), reset before each task by writing 5 to /proc/self/clear_refs (Linux).
Both are reported as the peak and as its rise over the start of the task (`rise_mb`): on CUDA the
rise of a train step is that model's own footprint (weights, gradients, optimizer state,
activations), whatever else is allocated; on CPU the rise can be lower than the footprint when
the allocator reuses memory freed by an earlier task. Where the reset is not possible the CPU value
is resource.getrusage's ru_maxrss, the process's lifetime peak (memory.method = "ru_maxrss").

Data: synthetic fluorescence images (qmed.data.synthetic, seeded) at 1.5x the crop size, or a
dataset folder (--data).
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qmed import runtime
from qmed.errors import QmedInputError
from qmed.experiments.common import machine_info
from qmed.segment import trainstep
from qmed.segment.trainstep import EpochTally, StepParts

WARMUP = 2
OVERHEAD_TARGET = 1.10  # the target: whole recipe <= 1.10 x a bare smp step
EDGE_TARGET = 0.05  # edge channel <= 5 % of a step


# -- memory --------------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory over a `with` block, in MiB: CUDA tensors, or the CPU process's resident set."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda.max_memory_allocated" if device.type == "cuda" else "VmHWM"
        self.peak_mb = float("nan")
        self.start_mb = float("nan")
        self.reserved_mb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            if not _reset_cpu_peak() or _proc_status_kb("VmHWM") is None:
                self.method = "ru_maxrss"
            rss = _proc_status_kb("VmRSS")
            self.start_mb = rss / 1024 if rss is not None else float("nan")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.reserved_mb = torch.cuda.max_memory_reserved(self.device) / 2**20
        elif self.method == "VmHWM":
            self.peak_mb = (_proc_status_kb("VmHWM") or 0) / 1024
        else:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
            self.peak_mb = kb / 1024 / (1024 if sys.platform == "darwin" else 1)
        return False


# -- timing --------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- data ----------------------------------------------------------------------------------------


class MemoryPairs:
    """Images held in memory in LoadedPairs' item format: (float32 HxWx3 image, bool mask, int32 labels)."""

    def __init__(self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
        self.items = items
        self.pairs = [None] * len(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def synthetic_pairs(size: int, n: int = 8, seed: int = 0) -> MemoryPairs:
    from qmed.data.synthetic import generate_sample

    rng = np.random.default_rng(seed)
    side = int(size * 1.5)
    items = []
    for i in range(n):
        img, labels = generate_sample(rng, (side, side), empty=(i % 4 == 3))
        x = np.repeat((img.astype(np.float32) / 255.0)[..., None], 3, axis=2)
        items.append((x, labels > 0, labels.astype(np.int32)))
    return MemoryPairs(items)


def folder_pairs(data: Path, cfg, n: int = 32) -> MemoryPairs:
    from qmed.data.batches import LoadedPairs
    from qmed.data.dataset import find_pairs

    lp = LoadedPairs(find_pairs(data)[:n], cfg, cache=False)
    return MemoryPairs([lp[i] for i in range(len(lp))])


class BatchMaker:
    """Draws batches the way qmed's trainer does: sampler -> (index, position) -> TrainCrops."""

    def __init__(self, data, cfg, batch: int):
        from qmed.data.batches import EpochDraws, TrainCrops, sampling_weights

        self.crops = TrainCrops(data, cfg)
        weights, _ = sampling_weights(data, cfg)
        self.draws = EpochDraws(weights, 10**6, cfg.train.seed)
        self.it = iter(self.draws)
        self.batch = batch

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(self.crops[next(self.it)] for _ in range(self.batch)))
        return torch.stack(xs), torch.stack(ys)


# -- models --------------------------------------------------------------------------------------


class BareSmp(nn.Module):
    """What a user would write: ImageNet normalisation + smp UNet++ (same encoder, decoder, SCSE)."""

    def __init__(self, model_cfg):
        super().__init__()
        import segmentation_models_pytorch as smp

        from qmed.models.common import register_imagenet_stats
        from qmed.models.segmenter import ARCHS

        # the Table II ladder's archs (qmed decoders) are compared with smp's plain Unet
        self.net = getattr(smp, ARCHS.get(model_cfg.arch, "Unet"))(
            encoder_name=model_cfg.encoder,
            encoder_weights=None,
            in_channels=3,
            classes=1,
            decoder_channels=list(model_cfg.decoder_channels),
            decoder_attention_type=model_cfg.attention,
        )
        register_imagenet_stats(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


@dataclass
class Task:
    name: str
    fn: Callable[[int], object]
    images: int
    group: int
    every: int
    first_call: int
    extra: dict


def _autocast(device: torch.device, amp: bool):
    """--amp: float16 on CUDA, bfloat16 on a CPU with native support (qmed.runtime)."""
    return runtime.autocast(device, runtime.autocast_dtype(device, amp, cpu_bf16=amp))


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def train_step_fn(s: StepParts, batches: list) -> Callable[[int], None]:
    """One micro-batch of the trainer's loop, through the trainer's own step (qmed.segment.trainstep):
    forward, loss, backward, the non-finite guard; optimizer step every `accumulate`."""
    tally = EpochTally()

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        trainstep.micro_step(s, x, y, (i + 1) % s.accumulate == 0, tally)

    return step


# -- the benchmark -------------------------------------------------------------------------------


def _check_device(device: str, amp: bool) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QmedInputError(
            None,
            f"--device {device}: no CUDA device is available here (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'})",
        )
    if dev.type not in ("cpu", "cuda"):
        raise QmedInputError(None, f"--device {device}: choose cpu or cuda[:N]")
    if amp and dev.type == "cpu" and not runtime.cpu_has_native_bf16():
        raise QmedInputError(None, "--amp on the CPU needs native bfloat16 (AVX512-BF16 or AMX), which this CPU lacks")
    return dev


def run_speed(
    preset: str = "cpu",
    size: int = 256,
    batch: int | None = None,
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    steps: int = 10,
    warmup: int = WARMUP,
    data: str | Path | None = None,
    infer_batch: int | None = None,
    overrides: list[str] | None = None,
    say: Callable = print,
) -> dict:
    """Measure everything; returns the JSON document (see the module docstring)."""
    from qmed.config import deep_merge, parse_overrides, resolve_config
    from qmed.experiments.common import smp_baseline_config

    if size < 32 or size % 32:
        raise QmedInputError(None, f"--size must be a multiple of 32 (the encoder down-samples 5 times), got {size}")
    if steps < 1 or warmup < 0:
        raise QmedInputError(None, "--steps must be >= 1")
    dev = _check_device(device, amp)
    over = {"data": {"crop": size}, "train": {"amp": amp}}
    cfg = resolve_config(preset, overrides=deep_merge(over, parse_overrides(overrides)) if overrides else over)
    bs = batch or cfg.train.batch_size
    ibs = infer_batch or bs
    if bs < 1 or ibs < 1:
        raise QmedInputError(None, "--batch must be >= 1")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    torch.manual_seed(0)

    base_cfg = smp_baseline_config(preset)
    base_cfg = base_cfg.model_copy(update={"data": base_cfg.data.model_copy(update={"crop": size})})
    pairs = folder_pairs(Path(data), cfg) if data is not None else synthetic_pairs(size)
    run = SpeedRun(cfg, dev, amp, channels_last, warmup, say)
    recipe_batches, bare_batches = run.add_data(pairs, base_cfg, bs)
    run.add_train_steps(recipe_batches, bare_batches, bs)
    run.add_parts(recipe_batches, bs)
    run.add_inference(recipe_batches, ibs)
    run.time_rounds(steps)
    settings = {
        "preset": preset,
        "encoder": cfg.model.encoder,
        "size": size,
        "batch": bs,
        "infer_batch": ibs,
        "device": str(dev),
        "amp": amp,
        "channels_last": channels_last,
        "steps": steps,
        "warmup": warmup,
        "accumulate": cfg.train.accumulate,
        "loss": cfg.train.loss,
        "input_mode": cfg.model.input_mode,
        "data": str(data) if data is not None else "synthetic",
        "tta_views": cfg.predict.tta,
    }
    return _clean(_document(run.results, run.mem_method, settings, dev, bs))


class SpeedRun:
    """The measured tasks, each set up and warmed up when added (its peak memory taken over both),
    then timed together, round-robin, by `time_rounds`."""

    def __init__(self, cfg, dev: torch.device, amp: bool, channels_last: bool, warmup: int, say: Callable):
        self.cfg, self.dev, self.amp, self.channels_last, self.warmup, self.say = (
            cfg,
            dev,
            amp,
            channels_last,
            warmup,
            say,
        )
        self.tasks: list[Task] = []
        self.results: dict[str, dict] = {}
        self.mem_method = None
        self.setups: dict[str, StepParts] = {}
        self.steps: dict[str, Callable[[int], None]] = {}

    def add(
        self,
        name: str,
        fn: Callable[[int], object],
        images: int,
        make: Callable[[], object] | None = None,
        group: int = 1,
        every: int = 1,
        memory: bool = True,
        **extra,
    ) -> None:
        """Set the task up and warm it up (its peak memory is taken over both), then queue it for timing."""
        self.say(f"warm-up: {name}")
        w = -(-self.warmup // group) * group  # whole groups, so timing starts on a group boundary
        mem = PeakMemory(self.dev) if memory else None
        with mem if mem is not None else contextlib.nullcontext():
            if make is not None:
                make()
            for i in range(w):
                fn(i)
        self.tasks.append(Task(name, fn, images, group, every, w, extra))
        if mem is not None:
            self.results[name] = {
                "peak_mb": mem.peak_mb,
                "start_mb": mem.start_mb,
                "rise_mb": mem.peak_mb - mem.start_mb,
            }
            if mem.reserved_mb is not None:
                self.results[name]["reserved_mb"] = mem.reserved_mb
            self.mem_method = mem.method
        else:
            self.results[name] = {}

    def setup(self, kind: str) -> StepParts:
        """Model, loss and optimizer as the two trainers build them: "recipe" (qmed's) or "bare" (plain smp)."""
        from qmed.models.segmenter import build
        from qmed.segment.losses import build_loss, loss_from_config

        cfg = self.cfg
        torch.manual_seed(0)
        if kind == "recipe":
            model = build(cfg.model, pretrained=False)
            opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
            loss, acc, clip = (
                loss_from_config(cfg.train, cfg.model.deep_supervision, cfg.model.instance_head),
                cfg.train.accumulate,
                cfg.train.clip_grad,
            )
            lr, wd = cfg.train.lr, cfg.train.weight_decay
        else:
            model, opt_cls, loss, acc, clip = BareSmp(cfg.model), torch.optim.Adam, build_loss("dice_bce"), 1, None
            lr, wd = 1e-3, 0.0
        model = model.to(self.dev)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        # the trainer's step without its schedule and weight EMA (after_step), as before
        return StepParts(
            model,
            loss,
            opt_cls(model.parameters(), lr=lr, weight_decay=wd),
            torch.amp.GradScaler("cuda", enabled=self.amp and self.dev.type == "cuda"),
            self.dev,
            runtime.autocast_dtype(self.dev, self.amp, cpu_bf16=self.amp),
            acc,
            clip,
            channels_last=self.channels_last,
        )

    def add_data(self, pairs, base_cfg, bs: int) -> tuple[deque, deque]:
        """The two data pipelines; batches are drawn on the CPU in the main process (qmed trains
        with num_workers=0). Returns the recipe's and the bare pipeline's recent batches."""
        recipe_maker, bare_maker = BatchMaker(pairs, self.cfg, bs), BatchMaker(pairs, base_cfg, bs)
        recipe_batches: deque = deque(maxlen=8)
        bare_batches: deque = deque(maxlen=8)
        self.add("data_recipe", lambda i: recipe_batches.append(recipe_maker()), bs, memory=False)
        self.add("data_bare", lambda i: bare_batches.append(bare_maker()), bs, memory=False)
        return recipe_batches, bare_batches

    def add_train_steps(self, recipe_batches: deque, bare_batches: deque, bs: int) -> None:
        """Train steps, each set up inside its memory measurement, so rise_mb is its own footprint."""
        for kind, batches in (("bare", bare_batches), ("recipe", recipe_batches)):

            def make(kind=kind, batches=batches) -> None:
                self.setups[kind] = self.setup(kind)
                self.steps[kind] = train_step_fn(self.setups[kind], batches)

            def step(i: int, kind=kind) -> None:
                self.setups[kind].model.train()
                self.steps[kind](i)

            self.add(
                f"train_compute_{kind}", step, bs, make=make, group=self.cfg.train.accumulate if kind == "recipe" else 1
            )

    def add_parts(self, recipe_batches: deque, bs: int) -> None:
        """The recipe's parts, alone, on one batch: edge channel, projection, the two losses."""
        from qmed.segment.losses import build_loss, loss_from_config

        dev, amp = self.dev, self.amp
        rm: nn.Module = self.setups["recipe"].model
        x0 = _to_device(recipe_batches[0][0], dev, self.channels_last)
        y0 = recipe_batches[0][1].to(dev)
        if getattr(rm, "edge", None) is not None:

            def edge(i: int) -> None:
                with _autocast(dev, amp):
                    rm.edge(x0)

            self.add("edge", edge, bs)
        if getattr(rm, "projection", None) is not None:
            with torch.no_grad(), _autocast(dev, amp):
                x4 = torch.cat([x0, rm.edge(x0)], dim=1)

            def proj(i: int) -> None:
                with _autocast(dev, amp):
                    z = rm.projection(x4)
                z.float().sum().backward()
                rm.projection.zero_grad(set_to_none=True)

            self.add("projection", proj, bs)
        logits0 = torch.randn(y0.shape, device=dev) * 3
        for name, loss_fn in (("loss_recipe", loss_from_config(self.cfg.train)), ("loss_bare", build_loss("dice_bce"))):

            def loss_step(i: int, fn=loss_fn) -> None:
                z = logits0.clone().requires_grad_(True)
                fn(z, y0).backward()

            self.add(name, loss_step, bs, memory=False)

    def add_inference(self, recipe_batches: deque, ibs: int) -> None:
        """Inference in eval mode under no_grad, through qmed.segment.predict's own view loop."""
        from qmed.segment.predict import forward_views

        xi = torch.cat(list(b[0] for b in recipe_batches))[:ibs]
        while xi.shape[0] < ibs:
            xi = torch.cat([xi, xi])[:ibs]
        xi = _to_device(xi, self.dev, self.channels_last)
        for name, kind, views in (
            ("infer_bare", "bare", 1),
            ("infer_recipe", "recipe", 1),
            ("infer_recipe_tta", "recipe", self.cfg.predict.tta),
        ):

            def infer(i: int, kind=kind, views=views) -> None:
                m = self.setups[kind].model
                m.eval()
                forward_views(m, xi, views, self.amp, cpu_bf16=self.amp)

            self.add(name, infer, ibs, every=2 if views > 1 else 1, views=views)

    def time_rounds(self, steps: int) -> None:
        """Round-robin over all tasks, so a change in the machine's speed (other jobs, clock boost)
        touches every task alike instead of whichever phase happened to run then; medians."""
        self.say(f"timing {steps} rounds")
        times: dict[str, list[float]] = {t.name: [] for t in self.tasks}
        calls = {t.name: t.first_call for t in self.tasks}
        for r in range(steps):
            for t in self.tasks:
                if r % t.every:
                    continue
                _sync(self.dev)
                t0 = time.perf_counter()
                for _ in range(t.group):
                    t.fn(calls[t.name])
                    calls[t.name] += 1
                _sync(self.dev)
                times[t.name].append((time.perf_counter() - t0) / t.group)
        for t in self.tasks:
            sec = float(np.median(times[t.name]))
            self.results[t.name].update(
                {
                    "ms": sec * 1e3,
                    "images_per_s": t.images / sec if sec > 0 else float("nan"),
                    "timed_calls": len(times[t.name]) * t.group,
                    **t.extra,
                }
            )


def _document(results: dict, mem_method: str | None, settings: dict, dev: torch.device, bs: int) -> dict:
    """The JSON document: every phase, the train steps, and the recipe's overhead split into its parts."""
    bare_step = results["data_bare"]["ms"] + results["train_compute_bare"]["ms"]
    recipe_step = results["data_recipe"]["ms"] + results["train_compute_recipe"]["ms"]
    parts = {
        "edge": results.get("edge", {}).get("ms", 0.0),
        "projection": results.get("projection", {}).get("ms", 0.0),
        "data": results["data_recipe"]["ms"] - results["data_bare"]["ms"],
        "loss": results["loss_recipe"]["ms"] - results["loss_bare"]["ms"],
    }
    parts["rest"] = recipe_step - bare_step - sum(parts.values())
    overhead = {
        k: {"ms": v, "share_of_recipe_step": v / recipe_step, "fraction_of_bare_step": v / bare_step}
        for k, v in parts.items()
    }
    return {
        "benchmark": "speed",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": settings,
        "machine": machine_info(dev),
        "memory": {
            "method": mem_method,
            "unit": "MiB",
            "note": (
                "CUDA tensors allocated (torch.cuda.max_memory_allocated) over each task's set-up and warm-up; "
                "+rise = over the task's start (a train step's rise is its own footprint)"
                if dev.type == "cuda"
                else "process resident set peak (VmHWM, reset per task) over each task's set-up and warm-up; +rise = over the task's start"
                if mem_method == "VmHWM"
                else "ru_maxrss: the process's lifetime peak, not per task"
            ),
        },
        "phases": results,
        "train_step_ms": {"bare": bare_step, "recipe": recipe_step},
        "train_images_per_s": {"bare": bs / bare_step * 1e3, "recipe": bs / recipe_step * 1e3},
        "recipe_over_bare": recipe_step / bare_step,
        "overhead": overhead,
        "targets": {
            "recipe_over_bare_max": OVERHEAD_TARGET,
            "edge_share_max": EDGE_TARGET,
            "recipe_over_bare_met": recipe_step / bare_step <= OVERHEAD_TARGET,
            "edge_share_met": overhead["edge"]["share_of_recipe_step"] <= EDGE_TARGET,
        },
    }


def _clean(obj):
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


ROW_LABELS = [
    ("train step, bare smp", None),
    ("train step, qmed recipe", None),
    ("  data, bare (uniform, flips)", "data_bare"),
    ("  data, recipe (sampler, augment)", "data_recipe"),
    ("  compute, bare (Adam)", "train_compute_bare"),
    ("  compute, recipe (AdamW)", "train_compute_recipe"),
    ("  edge channel (Gabor fwd)", "edge"),
    ("  projection 4->3 (fwd+bwd)", "projection"),
    ("  loss Dice+BCE (fwd+bwd)", "loss_bare"),
    ("  loss, recipe's train.loss (fwd+bwd)", "loss_recipe"),
    ("inference, bare smp", "infer_bare"),
    ("inference, recipe", "infer_recipe"),
    ("inference, recipe, TTA", "infer_recipe_tta"),
]


def speed_rows(doc: dict) -> list[list[str]]:
    """[phase, ms per batch, images/s, peak MiB (+ increase), vs bare step] rows for the table."""
    ph, bare = doc["phases"], doc["train_step_ms"]["bare"]

    def num(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    rows = []
    for label, key in ROW_LABELS:
        if key is None:
            kind = "bare" if "bare" in label else "recipe"
            ms = doc["train_step_ms"][kind]
            mem = ph[f"train_compute_{kind}"]
            rows.append(
                [label, num(ms), num(doc["train_images_per_s"][kind], "{:.2f}"), _mem(mem), f"{ms / bare:.3f}x"]
            )
            continue
        if key not in ph:
            continue
        r = ph[key]
        rows.append(
            [
                label,
                num(r["ms"]),
                num(r["images_per_s"], "{:.2f}"),
                _mem(r) if "peak_mb" in r else "-",
                f"{r['ms'] / bare:.3f}x" if key.startswith(("data", "edge", "projection", "loss", "train")) else "-",
            ]
        )
    return rows


def _mem(r: dict) -> str:
    if r.get("peak_mb") is None:
        return "-"
    return f"{r['peak_mb']:.0f} (+{r['rise_mb']:.0f})" if r.get("rise_mb") is not None else f"{r['peak_mb']:.0f}"


def overhead_rows(doc: dict) -> list[list[str]]:
    rows = []
    for k, v in doc["overhead"].items():
        rows.append(
            [k, f"{v['ms']:.1f}", f"{100 * v['share_of_recipe_step']:.1f} %", f"{v['fraction_of_bare_step']:+.3f}"]
        )
    rows.append(["recipe / bare step", "", "", f"{doc['recipe_over_bare']:.3f}x"])
    return rows


def rich_tables(doc: dict):
    from rich.table import Table

    s = doc["settings"]
    title = (
        f"speed: {s['preset']} ({s['encoder']}), {s['size']} px, batch {s['batch']}, {s['device']}"
        f"{', AMP' if s['amp'] else ''}{', channels-last' if s['channels_last'] else ''}; {s['steps']} timed steps after {s['warmup']}"
    )
    t = Table(title=title)
    mem_head = "peak MiB (+rise)"
    for c, j in (
        ("phase", "left"),
        ("ms/batch", "right"),
        ("img/s", "right"),
        (mem_head, "right"),
        ("x bare step", "right"),
    ):
        t.add_column(c, justify=j)
    for row in speed_rows(doc):
        t.add_row(*row)
    o = Table(title="recipe overhead, broken out (ms per batch)")
    for c, j in (("part", "left"), ("ms", "right"), ("% of recipe step", "right"), ("x bare step", "right")):
        o.add_column(c, justify=j)
    for row in overhead_rows(doc):
        o.add_row(*row)
    return t, o
