"""The typed config models (pydantic v2) and the named presets (src/qmed/configs/*.yaml).

- `QmedConfig`: segmentation (`qmed train`, presets cpu, paper, tiny), in sections;
- `ClassifyConfig`: `qmed classify train` (presets classify-*.yaml: `--preset cpu` reads
  classify-cpu.yaml), flat: its keys are the "config" of classifier checkpoints;
- `SimCLRConfig` (`qmed pretrain simclr`) and `DDPMConfig` (`qmed synthesize`);
- `PQCConfig`: the quantum feature layer (SPEC Q1), the one set of quantum settings: the
  classifier's PQC layer is built from it and HQ-UNet's `model.hq` (`HQConfig`) extends it.

Every field can be overridden from the CLI with `--set section.field=value` (YAML syntax for the
value; the flat classification settings take `--set field=value`). Unknown keys and wrong types
are refused with a one-line message (pydantic, extra=forbid): `validated` turns pydantic's
ValidationError into a QmedInputError, and `from_dict` does so for the verbs' settings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from qmed.errors import QmedInputError

PRESET_DIR = Path(__file__).parent / "configs"
CLASSIFY_PREFIX = "classify-"  # classification presets: configs/classify-NAME.yaml, chosen as NAME


def _ordered_positive(v: tuple[float, float]) -> tuple[float, float]:
    """A (low, high) factor range: 0 < low <= high."""
    if not 0 < v[0] <= v[1]:
        raise _refuse(f"needs 0 < low <= high, got {list(v)}")
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


M = TypeVar("M", bound=BaseModel)


def _problem(exc: ValidationError) -> str:
    """pydantic's errors -> one line: the first problem (where, what) and how many more there are."""
    errors = exc.errors()
    err = errors[0]
    where = ".".join(str(x) for x in err["loc"])
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"config field '{where}': {msg}{more}" if where else f"{msg}{more}"


def validated(model: type[M], data: Any, source: str | Path | None = None) -> M:
    """`model` validated from `data`; a problem is one QmedInputError line naming `source`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise QmedInputError(source, _problem(exc)) from None


class _Settings(_Section):
    """A verb's settings; `from_dict` validates a dict (a checkpoint's, a preset's) with one-line errors."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str | Path | None = None):
        return validated(cls, dict(data or {}), source)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of setting `name` (the CLI options that set it show this one)."""
        return cls.model_fields[name].get_default(call_default_factory=True)


def _refuse(message: str) -> PydanticCustomError:
    """A validation error whose message is shown as is (no "Value error, " prefix)."""
    return PydanticCustomError("qmed", message)


# --------------------------------------------------------------------------------------------
# The quantum feature layer (SPEC Q1; `qmed.models.quantum`), shared by classification and HQ-UNet


def _in_range(lo: int, hi: int, why: str = ""):
    def check(v: int) -> int:
        if not lo <= v <= hi:
            raise _refuse(f"must be {lo}..{hi}{why}, got {v}")
        return v

    return AfterValidator(check)


Qubits = Annotated[int, _in_range(1, 20, " (statevector simulation costs 2**Q)")]
Layers = Annotated[int, _in_range(1, 50)]
# "strong": qml.StronglyEntanglingLayers; "basic": qml.BasicEntanglerLayers (RX + CNOT ring)
Entangler = Literal["strong", "basic"]
# Angle encoding RY or RX; "y" / "x" are accepted.
Rotation = Annotated[Literal["Y", "X"], BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)]
# Names the quantum layer's settings had before they were one model (PQCConfig's dataclass).
PQC_OLD_NAMES = {"n_qubits": "qubits", "n_layers": "layers"}


class PQCConfig(_Settings):
    """The quantum feature layer's settings: Q qubits, L variational layers, the encoding, the
    PennyLane device, and the residual weight α's start (`qmed.models.quantum.PQCLayer`).

    One model for every quantum layer: the classifier's (built from `ClassifyConfig`'s flat
    qubits/layers/entangler/rotation/qdevice/diff_method/alpha_init) and HQ-UNet's bottleneck
    (`HQConfig`, which adds where the layer sits). The old names n_qubits / n_layers are accepted."""

    qubits: Qubits = 4  # Q
    layers: Layers = 2  # L variational entangling layers
    entangler: Entangler = "strong"
    rotation: Rotation = "Y"
    device: str = "default.qubit"  # any PennyLane device name
    diff_method: str = "backprop"  # backprop broadcasts over the batch on default.qubit
    alpha_init: float = 0.01  # initial residual weight α (0 = starts exactly as identity)
    angle_scale: float = math.pi  # θ = angle_scale · tanh(W_q h)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in PQC_OLD_NAMES):
            data = dict(data)
            for old, new in PQC_OLD_NAMES.items():
                if old in data:
                    if new in data:
                        raise _refuse(f"give {new} or its old name {old}, not both")
                    data[new] = data.pop(old)
        return data

    def updated(self, **changes: Any):
        """A validated copy with `changes` (old names accepted)."""
        changes = {PQC_OLD_NAMES.get(k, k): v for k, v in changes.items()}
        return type(self).from_dict({**self.model_dump(), **changes})


class EdgeConfig(_Section):
    """The Gabor bank of eq. (4): 8 orientations x 3 wavelengths, sigma 5, gamma 0.5."""

    n_orientations: int = 8
    wavelengths: list[float] = Field(default_factory=lambda: [4.0, 10.0, 20.0])
    sigma: float = 5.0
    gamma: float = 0.5
    psi: float = 0.0
    ksize: int = 31


class HQConfig(PQCConfig):
    """HQ-UNet's bottleneck layer (SPEC Q4; `qmed.models.hq_unet`): the Q1 PQC layer (`PQCConfig`:
    Q qubits, L layers, ...) and where it sits."""

    # `classical` is the twin for the equal-size comparison: the circuit replaced by a small MLP
    # with (as nearly as integer widths allow) the circuit's parameter count.
    core: Literal["quantum", "classical"] = "quantum"
    # `positions`: the circuit at every bottleneck position (quanvolution-like); `pooled`: once on
    # the globally averaged bottleneck, its output added at every position.
    placement: Literal["positions", "pooled"] = "positions"


HEAD_ARCHS = ("unetplusplus", "unet")  # smp's multi-class head carries model.instance_head's second channel


class ModelConfig(_Section):
    # unetplusplus / unet: smp's. attention_unet, ms_attention_unet (Table II ladder) and hq_unet
    # (Q4) use the same smp encoder (model.encoder, model.encoder_weights) with qmed's decoders
    # (`qmed.models.ladder`, `qmed.models.hq_unet`).
    arch: Literal["unetplusplus", "unet", "attention_unet", "ms_attention_unet", "hq_unet"] = "unetplusplus"
    encoder: str = "efficientnet-b7"
    # "imagenet" (hub download), a path to a .pth state dict, "offline-mobilenet" (the local
    # torchvision MobileNetV2 file, if installed) or null for random init.
    encoder_weights: str | None = "imagenet"
    decoder_channels: list[int] = Field(default_factory=lambda: [256, 128, 64, 32, 16])
    attention: Literal["scse"] | None = "scse"
    # How the 4th (edge) channel reaches the encoder: the paper's learnable projection, smp's own
    # 4-channel stem, or not at all (plain RGB; the "channel dropping" ablation).
    input_mode: Literal["projection", "stem4", "none"] = "projection"
    projection_mid: int = 16
    edge: EdgeConfig = Field(default_factory=EdgeConfig)
    # Dropout2d after each decoder block of attention_unet / ms_attention_unet (MC-Dropout active
    # learning needs it > 0); the smp archs have no such layer and refuse a value > 0.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    hq: HQConfig = Field(default_factory=HQConfig)
    # UNet++'s deep supervision (Zhou et al. 2018; smp has none): in training, 1x1 conv heads on the
    # nested nodes X^{0,1..3} add auxiliary outputs, weighed by train.deep_supervision_weights;
    # prediction uses the main output only. Off until a measurement says otherwise.
    # qmed.models.segmenter.nested_nodes, qmed.segment.losses.DeepSupervisionLoss.
    deep_supervision: bool = False
    # Issue 20's learned instance head: "contact" adds a second output channel trained on the
    # pixels of each object within `contact_width` px of another object (the DSB2018 winners'
    # touching-border channel, qmed.data.objects.contact_map); `qmed predict --instances` then
    # seeds a watershed with the h-maxima of the distance to background or contact (qmed.segment.instances). "none": the
    # paper's single foreground output, split by the distance transform alone.
    instance_head: Literal["none", "contact"] = "none"
    contact_width: int = Field(2, ge=1, le=16)

    @property
    def out_channels(self) -> int:
        """Output channels: the foreground, plus the contact channel with instance_head=contact."""
        return 2 if self.instance_head == "contact" else 1

    @model_validator(mode="after")
    def _deep_supervision_needs_unetplusplus(self):
        if self.deep_supervision and self.arch != "unetplusplus":
            raise _refuse(
                f"deep_supervision needs arch 'unetplusplus' (UNet++'s nested decoder), not {self.arch!r}; set it to false"
            )
        if self.instance_head != "none" and self.arch not in HEAD_ARCHS:
            raise _refuse(
                f"instance_head needs arch 'unetplusplus' or 'unet' (smp's multi-class head), not {self.arch!r}; set it to none"
            )
        return self


class AugmentConfig(_Section):
    flip_p: float = 0.5
    rot90_p: float = 0.5
    elastic_p: float = 0.3
    elastic_alpha: float = 120.0
    elastic_sigma: float = 9.0
    brightness_contrast: float = 0.2
    brightness_contrast_p: float = 0.5
    # Scale augmentation (not in the paper; nnU-Net draws 0.7-1.4): with probability scale_p a
    # window of crop/f px is cut and resized to the crop, f log-uniform in scale_range, so the
    # model sees objects larger (f > 1) and smaller (f < 1) than the training images hold.
    scale_p: float = 0.0
    scale_range: tuple[float, float] = (0.7, 1.4)
    # Appearance families (off in the presets; `--preset auto` turns on the one that fits the data):
    # H&E stain jitter (albumentations' HEStain: stain matrix and concentration perturbed) and hue /
    # saturation jitter for stained tissue; gamma for gray images.
    stain_p: float = Field(0.0, ge=0.0, le=1.0)
    hue_saturation_p: float = Field(0.0, ge=0.0, le=1.0)
    gamma_p: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("scale_range")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_positive(v)


class DataConfig(_Section):
    crop: int = 512
    # Magnification the model works at: training crops are cut as crop/zoom source px and resized
    # to crop, and validation and `qmed predict` resize each image by zoom and the probabilities
    # back, so small objects span more of the encoder's stride-2 features (Cellpose rescales to a
    # 30 px diameter for the same reason). 1 = the files' own scale.
    zoom: float = Field(1.0, ge=0.25, le=4.0)
    # Without --val: this share of --data is split off for validation; 0 trains on every image
    # without validation (the last epoch is the model; the report then needs --data).
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    split_seed: int = 0
    group_pattern: str | None = None
    # complexity: static weights from the masks (the paper's S6; qmed.data.sampling); uniform;
    # hard: online hard-image mining, weights from each image's running training loss, re-set
    # every epoch (first epoch uniform).
    sampler: Literal["complexity", "uniform", "hard"] = "complexity"
    small_boost: float = 1.5
    # Random crops drawn per epoch; null = one per training image.
    samples_per_epoch: int | None = None
    # Crops are centred on foreground with this probability (the rest uniformly at random), so
    # sparse images still show the model their cells. 0 = purely random crops.
    fg_crop_p: float = 0.0
    # Per-image intensity scaling before the model: `none` keeps the file's [0, 1] values;
    # `percentile` maps the image's `norm_percentiles` (low, high; over all pixels and channels)
    # to 0 and 1 and clips, so dim fluorescence images look like bright ones (as StarDist/CSBDeep do).
    # `reinhard` moves each image's colour, per channel in L*a*b*, to `stain_target`'s mean and std
    # (Reinhard stain normalisation for stained tissue; qmed.data.stain).
    normalize: Literal["none", "percentile", "reinhard"] = "none"
    norm_percentiles: tuple[float, float] = (1.0, 99.8)
    # reinhard: L*, a*, b* means then their stds; null = the median over the training images,
    # computed when training starts and saved with the run, so new images get the same stain.
    stain_target: tuple[float, float, float, float, float, float] | None = None
    cache: bool = True


class TrainConfig(_Section):
    epochs: int = 200
    batch_size: int = 4
    accumulate: int = 2
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 3e-4
    final_lr: float = 3e-7
    warmup: float = 0.1
    weight_decay: float = 1e-4
    # Learning-rate schedule: the paper's OneCycleLR (peak `lr`, floor `final_lr`), or `lr` held
    # constant (the plain smp baseline of `qmed benchmark quality`).
    schedule: Literal["onecycle", "constant"] = "onecycle"
    clip_grad: float | None = 0.5
    # stabilized: Algorithm 1; dice_bce: the smp-style baseline; dice: soft Dice alone and hybrid:
    # 0.5 Dice + 0.3 Focal + 0.2 Boundary (the Table II ladder's losses; `qmed.segment.losses`).
    loss: Literal["stabilized", "dice_bce", "dice", "hybrid"] = "stabilized"
    # Upper clamp of the stabilised loss's automatic pos_weight (Algorithm 1: 50; 1 = unweighted BCE).
    pos_weight_max: float = 50.0
    # dice_bce only: border emphasis of the BCE term, w = 1 + boundary_weight·exp(-d²/2σ²), d the
    # distance to the mask outline (the U-Net paper's weight map; 0 = plain BCE). qmed.segment.losses.
    boundary_weight: float = Field(0.0, ge=0.0)
    boundary_sigma: float = Field(3.0, gt=0.0)
    # dice_bce only: mean of each sample's soft Dice (the per-image metric's weighting) instead of
    # one Dice pooled over the batch. qmed.segment.losses.DiceBCELoss.
    dice_per_image: bool = False
    # Mixed precision on CUDA: float16 autocast + loss scaling.
    amp: bool = True
    # bfloat16 autocast for training steps and per-epoch validation on the CPU, where the CPU has
    # native bfloat16 (AVX512-BF16 or AMX); ignored elsewhere (emulated bf16 is slower than
    # float32). `qmed predict` stays float32. qmed.runtime; docs/benchmarks.md section 3b.
    cpu_bf16: bool = False
    seed: int = 0
    # EMA of the validation Dice that selects best.pt (paper eq. 6).
    val_ema_alpha: float = 0.9
    # How the accepted epochs' validation Dice is smoothed to select best.pt (qmed.segment.train.
    # selection_score): "ema", the paper's eq. 6, starts at epoch 1's score, so over 12 epochs with
    # alpha 0.9 it trails the raw score and best.pt is nearly always the last epoch; "ema_debiased"
    # divides a zero-started EMA by 1 - alpha^t (Adam's bias correction); "window" is the mean of
    # the last `selection_window` accepted scores. Outlier rejection applies to all three.
    selection: Literal["ema", "ema_debiased", "window"] = "ema"
    selection_window: int = Field(3, ge=1)
    # Outlier rule: an epoch whose validation Dice lies more than `outlier_z` robust z-scores
    # (median/MAD of the last `outlier_window` accepted epochs) below the median is rejected.
    outlier_window: int = 5
    outlier_z: float = 3.5
    outlier_min_drop: float = 0.05
    # Polyak EMA of the weights, evaluated instead of the raw weights when enabled.
    weight_ema: bool = False
    weight_ema_decay: float = 0.999
    val_every: int = Field(
        1, ge=1
    )  # validate every n-th epoch (and the last); the budget planner counts only those passes
    val_tta: bool = False
    max_minutes: float | None = None
    # The training loop's budget in seconds, set by `--minutes` (qmed.segment.budget): after each
    # epoch the trainer re-plans the remaining epochs' crops from the pace it measured, so the run
    # ends near the budget with its schedule complete even when the machine slows down or speeds up
    # after the few-second calibration. None: the epochs and crops as configured.
    budget_seconds: float | None = Field(None, gt=0)
    # The floor of useful work for `qmed train --minutes` and the demo: a budget that affords fewer
    # optimizer steps trains this many anyway and says it overran (a barely trained model is never
    # shown as the result). Benchmarks at equal budget do not apply it. 0: no floor.
    min_steps: int = Field(0, ge=0)
    num_workers: int = 0
    # Numerical safeguards: this many non-finite steps in a row restore the last good state.
    max_bad_steps: int = 5
    recovery_lr_factor: float = 0.5
    # model.instance_head=contact only: the contact channel's loss (0.5 Dice + 0.5 BCE) weighs this
    # much beside the foreground loss. qmed.segment.losses.ContactLoss.
    contact_weight: float = Field(1.0, ge=0.0)
    # model.deep_supervision only: the auxiliary outputs' loss weights, nearest the main output
    # first (X^{0,3}, X^{0,2}, X^{0,1}); the main output weighs 1 and the sum is normalised by the
    # sum of the weights. qmed.segment.losses.DeepSupervisionLoss.
    deep_supervision_weights: list[Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: [0.5, 0.25, 0.125], min_length=3, max_length=3
    )

    @model_validator(mode="after")
    def _dice_bce_options_need_dice_bce(self):
        # Only Dice + BCE takes them; silently ignoring them would mislead an ablation.
        if self.boundary_weight > 0 and self.loss != "dice_bce":
            raise _refuse(f"boundary_weight applies to loss 'dice_bce' only, not {self.loss!r}")
        if self.dice_per_image and self.loss != "dice_bce":
            raise _refuse(f"dice_per_image applies to loss 'dice_bce' only, not {self.loss!r}")
        return self


class PredictConfig(_Section):
    tta: int = 7
    threshold: float = 0.5
    tile: int = 1024
    overlap: float = 0.25
    batch_size: int = 4
    # Object-size normalisation (as Cellpose rescales to a diameter): a first pass without TTA
    # measures the median diameter of the predicted objects, the image is resized so it matches
    # `object_diameter` (the training masks' median, filled in by qmed train) within
    # `rescale_limits`, predicted again, and the probabilities resized back. Off in the paper.
    rescale: bool = False
    object_diameter: float | None = None
    rescale_limits: tuple[float, float] = (0.5, 2.0)

    @field_validator("rescale_limits")
    @classmethod
    def _rescale_limits(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_positive(v)


class QmedConfig(_Section):
    name: str = "custom"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    # Why each automatically chosen setting was chosen (`--preset auto`: field -> reason); written
    # with the resolved config into the run directory's config.yaml.
    reasons: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return v.strip() or "custom"


# --------------------------------------------------------------------------------------------
# Classification (`qmed classify`), its SimCLR pretraining and its DDPM synthesis


def _check_run_limits(cfg: Any, min_batch: int, why: str) -> None:
    """Checks every training verb shares: image_size, batch_size, epochs, minutes (None = no budget)."""
    if cfg.image_size < 16:
        raise _refuse(f"image_size must be at least 16 px, got {cfg.image_size}")
    if cfg.batch_size < min_batch:
        raise _refuse(f"batch_size must be at least {min_batch} ({why}), got {cfg.batch_size}")
    if cfg.epochs < 1:
        raise _refuse(f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.minutes is not None and cfg.minutes <= 0:
        raise _refuse(f"minutes must be positive, got {cfg.minutes}")


class ClassifyConfig(_Settings):
    """`qmed classify train` / `compare` (SPEC Q1-Q3; `qmed.classify`). Flat: these keys are the
    "config" that classifier checkpoints store (`model_dump()`), and those of classify-*.yaml."""

    # --set positive=1: class names may be numbers (MedMNIST labels)
    model_config = ConfigDict(coerce_numbers_to_str=True)

    model: str = "mobilenet_v2"
    weights: str | None = "imagenet"  # imagenet | a local .pth | offline-mobilenet | None
    # The quantum feature layer on the pooled features (`pqc_config()` gives its PQCConfig).
    pqc: bool = True
    qubits: Qubits = PQCConfig.default("qubits")
    layers: Layers = PQCConfig.default("layers")
    entangler: Entangler = PQCConfig.default("entangler")
    rotation: Rotation = PQCConfig.default("rotation")
    qdevice: str = PQCConfig.default("device")  # PQCConfig.device
    diff_method: str = PQCConfig.default("diff_method")
    alpha_init: float = PQCConfig.default("alpha_init")
    pqc_lr_mult: float = 10.0  # the quantum branch (W_q, circuit, W_r, α) learns at lr × this
    positive: str | None = None
    image_size: int = 128
    batch_size: int = 32
    epochs: int = 30
    minutes: float | None = None
    lr: float = 3e-4
    weight_decay: float = 1e-4  # Adam's L2 term
    dropout: float = 0.2
    patience: int = 6  # epochs without a better validation AUC before stopping
    class_weights: bool = False
    augment: bool = True
    hflip: bool = True
    vflip: bool = False
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    intensity: float = 0.1
    seed: int = 0
    val_fraction: float = 0.2  # only without --val: a stratified seeded split of --data
    synthetic: str | None = None  # images added to the training set only (e.g. qmed synthesize OUT)
    synthetic_class: str | None = None  # their class (default: the positive class)
    threshold: float = 0.5
    n_boot: int = 1000

    @model_validator(mode="after")
    def _limits(self):
        _check_run_limits(self, 2, "batch norm")
        if not 0.0 < self.threshold < 1.0:
            raise _refuse(f"threshold must lie in (0, 1), got {self.threshold}")
        return self

    def pqc_config(self) -> PQCConfig | None:
        """The quantum layer's settings, or None for the classical model."""
        if not self.pqc:
            return None
        return PQCConfig(
            qubits=self.qubits,
            layers=self.layers,
            entangler=self.entangler,
            rotation=self.rotation,
            device=self.qdevice,
            diff_method=self.diff_method,
            alpha_init=self.alpha_init,
        )

    @property
    def method(self) -> str:
        return f"{self.model}+pqc(Q={self.qubits},L={self.layers},{self.entangler})" if self.pqc else self.model


class SimCLRConfig(_Settings):
    """`qmed pretrain simclr` (SPEC Q2; `qmed.classify.pretrain`)."""

    model: str = "mobilenet_v2"
    weights: str | None = "imagenet"
    image_size: int = 128
    epochs: int = 50
    minutes: float | None = None
    batch_size: int = 64
    temperature: float = 0.5
    lr: float = 3e-4
    weight_decay: float = 1e-6
    proj_hidden: int = 512
    proj_dim: int = 128
    seed: int = 0

    @model_validator(mode="after")
    def _limits(self):
        _check_run_limits(self, 2, "a view needs negatives")
        if not self.temperature > 0:
            raise _refuse(f"temperature must be positive, got {self.temperature}")
        return self


class DDPMConfig(_Settings):
    """`qmed synthesize` (SPEC Q3; `qmed.classify.synthesize`)."""

    image_size: int = 64
    n: int = 100
    epochs: int = 300
    minutes: float | None = None
    batch_size: int = 16
    lr: float = 1e-3
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    train_timesteps: int = 1000
    sample_steps: int = 50
    seed: int = 0

    @model_validator(mode="after")
    def _limits(self):
        if self.n < 1:
            raise _refuse(f"--n must be at least 1, got {self.n}")
        _check_run_limits(self, 1, "images per step")
        step = 2 ** (len(self.block_out_channels) - 1)  # the UNet halves the size between blocks
        if self.image_size % step:
            raise _refuse(f"image_size must be a multiple of {step}, got {self.image_size}")
        if not 1 <= self.sample_steps <= self.train_timesteps:
            raise _refuse(f"sample steps must lie in 1..{self.train_timesteps}, got {self.sample_steps}")
        return self


def available_classify_presets() -> list[str]:
    """Names of the classification presets: configs/classify-NAME.yaml -> NAME."""
    return sorted(p.stem[len(CLASSIFY_PREFIX) :] for p in PRESET_DIR.glob(f"{CLASSIFY_PREFIX}*.yaml"))


def classify_preset_path(name: str) -> Path:
    """configs/classify-NAME.yaml for `NAME` (or for `classify-NAME`)."""
    stem = name if name.startswith(CLASSIFY_PREFIX) else CLASSIFY_PREFIX + name
    path = PRESET_DIR / f"{stem}.yaml"
    if not path.is_file():
        raise QmedInputError(
            None, f"unknown classification preset {name!r}; choose one of {', '.join(available_classify_presets())}"
        )
    return path


def resolve_classify_config(
    preset: str = "cpu", overrides: list[str] | dict | None = None, source: str | None = "--set"
) -> ClassifyConfig:
    """The classification preset <- overrides (`--set field=value` strings or a dict), validated once.

    `source`: what an error names when there are overrides (None: nothing, e.g. for CLI options)."""
    path = classify_preset_path(preset)
    data: dict = load_yaml(path)
    if overrides:
        over = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        return ClassifyConfig.from_dict(deep_merge(data, over), source)
    return ClassifyConfig.from_dict(data, path)


def available_presets() -> list[str]:
    """The segmentation presets (the classification ones are `available_classify_presets`)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith(CLASSIFY_PREFIX))


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _validate(data: dict, source: str | Path | None) -> QmedConfig:
    return validated(QmedConfig, data, source)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise QmedInputError(path, "config file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise QmedInputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise QmedInputError(path, "config must be a YAML mapping of sections")
    return data


def load_preset(name: str) -> QmedConfig:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file() or name.startswith(CLASSIFY_PREFIX):
        raise QmedInputError(None, f"unknown preset {name!r}; choose one of {', '.join(available_presets())}")
    return _validate(load_yaml(path), path)


def parse_overrides(items: list[str]) -> dict:
    """['train.epochs=3', 'model.encoder=resnet18'] -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise QmedInputError(None, f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def resolve_config(
    preset: str = "cpu", config_file: str | Path | None = None, overrides: list[str] | dict | None = None
) -> QmedConfig:
    """preset <- config file <- overrides, validated once at the end. A preset's instance head
    gives way to an architecture asked for that cannot carry it (`--set model.arch=hq_unet` on
    `cpu`), unless the head is asked for too: then the validator refuses the pair."""
    base = load_preset(preset).model_dump()
    source: str | Path | None = PRESET_DIR / f"{preset}.yaml"
    asked: dict = {}
    if config_file is not None:
        asked = load_yaml(config_file)
        source = config_file
    if overrides:
        asked = deep_merge(asked, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
        source = source if config_file is not None else "--set"
    base = deep_merge(base, asked)
    model = asked.get("model") if isinstance(asked.get("model"), dict) else {}
    if (
        "arch" in model
        and "instance_head" not in model
        and model["arch"] not in HEAD_ARCHS
        and isinstance(base.get("model"), dict)
    ):
        base["model"]["instance_head"] = "none"
    return _validate(base, source)


def config_from_dict(data: dict, source: str | Path | None = None) -> QmedConfig:
    return _validate(data, source)


def dump_yaml(cfg: QmedConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)
