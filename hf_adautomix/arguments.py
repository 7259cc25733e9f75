"""Argument dataclasses shared by the CLI (`HfArgumentParser`) and the Python API."""

from __future__ import annotations

import difflib
import functools
import logging
import typing
from dataclasses import dataclass, field, fields
from typing import Literal

from .mixers import MIXERS

logger = logging.getLogger(__name__)

# Derived from the one registry (`mixers.MIXERS`), so a new mixer is one entry there.
MIXUP_CHOICES = tuple(MIXERS)
LEARNED_MIXERS = tuple(name for name, cls in MIXERS.items() if cls.learned)

# Flags that only some methods read. Changed from its default under a --mixup that ignores it, a flag is an error when
# it can only have been meant for this run (--mix_prob, --timm_*), and a warning when it usually comes from a recipe
# written for another method (e.g. `cifar100_r18_adautomix.yaml --mixup cutmix` for a baseline).
ADAUTOMIX_ONLY_FLAGS = (
    "mix_num",
    "mix_num_random",
    "mce_weight",
    "adv_weight",
    "teacher_ref_passes",
    "adautomix_variant",
)
AUTOMIX_ONLY_FLAGS = ("mask_loss_weight",)
LEARNED_ONLY_FLAGS = (  # the generator and mix head of AdAutoMix / AutoMix
    "generator_lr",
    "generator_weight_decay",
    "generator_min_lr",
    "mix_layer",
    "lam_concat",
    "lam_margin",
    "mask_upsample",
    "share_mix_head",
    "save_mix_every",
)
TIMM_ONLY_FLAGS = (
    "timm_mixup_alpha",
    "timm_cutmix_alpha",
    "timm_cutmix_minmax",
    "timm_switch_prob",
    "timm_mode",
)

# The model trained when the user names none: a small transformers ResNet from scratch (random init), sized so
# the embedded default (digits, 32x32) trains to > 90 % in a couple of minutes on 2 CPU cores.
DEFAULT_MODEL_TYPE = "resnet"
DEFAULT_CONFIG_OVERRIDES = "embedding_size=32,hidden_sizes=[32,64,128,256],depths=[1,1,1,1],layer_type=basic"


def bad_choice_message(flag: str, value, choices, what: str = "choice", max_listed: int = 20) -> str:
    """One line for a value that is not among `choices`, with difflib's closest names and the choices when few.

    Example: "--mixup 'mixupp' is not a known method; did you mean 'mixup'? (choices: none, adautomix, ...)".
    """
    names = [str(c) for c in choices]
    # A choice the value begins ('adamw' -> 'adamw_torch'), else difflib's closest ('mixupp' -> 'mixup').
    close = [n for n in names if value and n.startswith(str(value))][:1] or difflib.get_close_matches(
        str(value), names, n=1
    )
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = (
        f" (choices: {', '.join(names)})"
        if len(names) <= max_listed
        else f" ({len(names)} choices, see --help)"
    )
    return f"{flag} {value!r} is not a known {what}{hint}{listed}"


def image_classification_model_types() -> list[str]:
    """transformers model types that have an image-classification model (AutoModelForImageClassification)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return sorted(set(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES) & set(CONFIG_MAPPING.keys()))


def _check_model_type(model_type: str) -> None:
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    known = image_classification_model_types()
    # `in` on the lazy mapping also sees architectures registered at run time (our cifar_resnet).
    if model_type in known or (
        model_type in CONFIG_MAPPING and CONFIG_MAPPING[model_type] in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING
    ):
        return
    close = difflib.get_close_matches(model_type, known, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    # A few names, never the whole list (transformers' own error prints all ~500 model types, 12 kB).
    raise ValueError(
        f"--model_type {model_type!r} is not a transformers architecture with an image-classification model"
        f"{hint} ({len(known)} such types, e.g. resnet, convnext, swin, vit)."
    )


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A transformers model (Hub id or local folder) or a timm model ('timm/...' id or a "
            "timm-format folder) to fine-tune."
        },
    )
    model_type: str | None = field(
        default=None,
        metadata={
            "help": "Train a transformers architecture from scratch (random init), e.g. resnet, convnext, "
            "swin. With no model argument at all, a small ResNet is used."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Config overrides 'k=v,k2=[1,2]' for --model_type / --model_name_or_path (transformers) "
            "or model kwargs for --timm_model."
        },
    )
    timm_model: str | None = field(
        default=None,
        metadata={"help": "A timm architecture name, e.g. resnet18, convnext_tiny (random init)."},
    )
    pretrained: bool = field(
        default=False, metadata={"help": "Load timm's pretrained weights for --timm_model."}
    )
    cifar_stem: bool = field(
        default=False,
        metadata={
            "help": "CIFAR variant for 32x32 inputs: 3x3 stride-1 stem without max-pool (ResNet/ResNeXt), "
            "stride-1 stem (ConvNeXt)."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})
    ignore_mismatched_sizes: bool = field(
        default=True,
        metadata={"help": "Allow a pretrained head with another number of classes to be replaced."},
    )
    license: str | None = field(
        default=None,
        metadata={"help": "License id for the model card's metadata, e.g. apache-2.0, mit, cc-by-4.0."},
    )

    def __post_init__(self):
        given = [n for n in ("model_name_or_path", "model_type", "timm_model") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError(
                f"Give only one of --model_name_or_path, --model_type, --timm_model (got {given})."
            )
        if not given:
            self.model_type = DEFAULT_MODEL_TYPE
            if self.config_overrides is None:
                self.config_overrides = DEFAULT_CONFIG_OVERRIDES
        if self.model_type:
            _check_model_type(self.model_type)


@dataclass
class MixupArguments:
    mixup: Literal[MIXUP_CHOICES] = field(default="none", metadata={"help": "The mixing method."})
    mix_alpha: float | None = field(
        default=None,
        metadata={
            "help": "α of the Beta(α, α) mixing-ratio law (α_B of AdAutoMix). Default: the method's "
            "OpenMixup/paper default for the architecture family."
        },
    )
    mix_prob: float = field(
        default=1.0,
        metadata={
            "help": "Fraction of batches that are mixed (hand-crafted methods and timm; an error with "
            "adautomix/automix/none)."
        },
    )

    # EMA teacher -------------------------------------------------------------------------------------------------
    ema: bool | None = field(
        default=None,
        metadata={"help": "Keep an EMA teacher of the weights (default: on for adautomix/automix)."},
    )
    ema_momentum: float = field(default=0.999, metadata={"help": "EMA momentum ξ₀ at the start."})
    ema_momentum_end: float = field(
        default=0.999999, metadata={"help": "EMA momentum ξ_end at the last step."}
    )
    ema_scope_start: float = field(
        default=0.1, metadata={"help": "Fraction a of training before the cosine rise ξ₀ → ξ_end begins."}
    )
    ema_warmup: bool = field(
        default=True,
        metadata={
            "help": "Cap the momentum at 1 − (1 + t)^(−2/3) (timm ModelEmaV3 warm-up) so the teacher is "
            "useful on short runs. --ema_warmup False gives the exact released schedule."
        },
    )
    export_model: Literal["auto", "ema", "online"] = field(
        default="auto",
        metadata={"help": "Which weights to export: the EMA teacher (auto when it exists) or online."},
    )

    # AdAutoMix / AutoMix ---------------------------------------------------------------------------------------
    adautomix_variant: Literal["released", "paper"] = field(
        default="released",
        metadata={
            "help": "released: the official code's generator objective (EMA teacher, alternating "
            "adversarial/cooperative steps); paper: Eq. 11/15 (gradient reversal on the online CE)."
        },
    )
    mix_num: int = field(default=3, metadata={"help": "N, images per mixed sample (AdAutoMix)."})
    mix_num_random: bool = field(default=False, metadata={"help": "Draw N from {2..mix_num} at every step."})
    mix_layer: int = field(
        default=3, metadata={"help": "Teacher stage (1-based) whose features feed the generator."}
    )
    lam_concat: bool = field(default=False, metadata={"help": "Append a λ channel to the generator's input."})
    mask_upsample: Literal["auto", "bilinear", "nearest"] = field(
        default="auto",
        metadata={"help": "Mask upsampling (auto: bilinear for AdAutoMix, nearest for AutoMix)."},
    )
    mce_weight: float = field(
        default=0.5, metadata={"help": "α: weight of the vanilla N-way mixup CE (N ≥ 3)."}
    )
    adv_weight: float = field(default=0.3, metadata={"help": "β: weight of the adversarial teacher CE."})
    lam_margin: float | None = field(
        default=None,
        metadata={
            "help": "m: vanilla mixup replaces the mask when λ is within m of 0 or 1 "
            "(default 0.03 AdAutoMix, 0.08 AutoMix)."
        },
    )
    teacher_ref_passes: Literal["shared", "separate"] = field(
        default="shared",
        metadata={
            "help": "AdAutoMix cosine references: 'shared' reuses the teacher's clean pass (same maths, "
            "fewer passes); 'separate' runs N extra teacher passes exactly as released."
        },
    )
    share_mix_head: bool = field(
        default=False, metadata={"help": "Use the model's own head for mixed images too."}
    )
    generator_lr: float | None = field(
        default=None,
        metadata={"help": "Generator learning rate (default: --learning_rate; 0 freezes the generator)."},
    )
    generator_weight_decay: float | None = field(
        default=None, metadata={"help": "Generator weight decay (default: --weight_decay)."}
    )
    generator_min_lr: float | None = field(
        default=None,
        metadata={
            "help": "If set, the generator's LR follows its own cosine from --generator_lr to this value "
            "(the released recipes); otherwise it follows the main schedule."
        },
    )
    mask_loss_weight: float = field(default=0.1, metadata={"help": "AutoMix mask-area loss weight."})
    save_mix_every: int = field(
        default=500,
        metadata={
            "help": "Save a PNG grid of source images and generated mixes every N steps (0: end only)."
        },
    )

    # Evaluation ----------------------------------------------------------------------------------------------------
    eval_robustness: bool = field(
        default=False,
        metadata={
            "help": "At every evaluation, also measure the online model and the EMA teacher on a fixed subset of the "
            "eval set (the first --eval_robustness_samples rows): top-1 under gaussian_noise, defocus_blur and "
            "contrast at severity 3 (CIFAR-C parameters for images of at most 64 px, else ImageNet-C's) and their "
            "mean, FGSM error at 8/255 and top-1 with half of the image dropped in 16x16 patches "
            "(eval_robust_* and eval_ema_robust_*). Costs six forward passes and one backward of the subset per "
            "model; needs imagecorruptions-imaug."
        },
    )
    eval_robustness_samples: int = field(
        default=500,
        metadata={"help": "Size of the --eval_robustness subset (the first rows of the eval set)."},
    )

    channels_last: bool = field(
        default=False, metadata={"help": "Train with channels-last weights and inputs."}
    )
    max_nonfinite_steps: int = field(
        default=0,
        metadata={
            "help": "A non-finite loss or gradient stops the run at that step (0, the default). With N > 0, up "
            "to N such steps are skipped instead (no weight, optimizer or BN-statistics update; counted and "
            "logged as nonfinite_steps_skipped); the run stops at the next one."
        },
    )

    # timm's Mixup (only read by --mixup timm; any other --mixup with a changed timm_* flag is an error) -------------
    timm_mixup_alpha: float = field(default=0.8, metadata={"help": "timm Mixup: mixup_alpha."})
    timm_cutmix_alpha: float = field(default=1.0, metadata={"help": "timm Mixup: cutmix_alpha."})
    timm_cutmix_minmax: str | None = field(
        default=None, metadata={"help": "timm Mixup: cutmix_minmax 'lo,hi'."}
    )
    timm_switch_prob: float = field(default=0.5, metadata={"help": "timm Mixup: switch_prob."})
    timm_mode: Literal["batch", "pair", "elem"] = field(
        default="batch", metadata={"help": "timm Mixup: mode."}
    )

    def __post_init__(self):
        for name, choices in _literal_choices(type(self)).items():
            if getattr(self, name) not in choices:
                what = "method" if name == "mixup" else "choice"
                raise ValueError(bad_choice_message(f"--{name}", getattr(self, name), choices, what))
        self._check_ranges()
        if self.ema is None:
            self.ema = self.mixup in LEARNED_MIXERS
        if self.mixup in LEARNED_MIXERS and not self.ema:
            raise ValueError(
                f"--mixup {self.mixup} needs its EMA teacher (the generator's encoder and judge); "
                "drop --ema False."
            )
        self._check_ignored_flags()

    def _check_ranges(self) -> None:
        """Each numeric flag within its range, named in the error."""
        if self.mix_alpha is not None and self.mix_alpha <= 0:
            raise ValueError(f"--mix_alpha must be > 0, got {self.mix_alpha}.")
        if self.eval_robustness_samples < 1:
            raise ValueError(f"--eval_robustness_samples must be >= 1, got {self.eval_robustness_samples}.")
        if self.mix_num < 2:
            raise ValueError(f"--mix_num must be >= 2, got {self.mix_num}.")
        if not 0 <= self.mce_weight <= 1 or not 0 <= self.adv_weight <= 1:
            raise ValueError(
                f"--mce_weight and --adv_weight must be in [0, 1]; got {self.mce_weight}, {self.adv_weight}."
            )
        for name in ("ema_momentum", "ema_momentum_end"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name)}.")
        if not 0 <= self.ema_scope_start <= 1:
            raise ValueError(f"--ema_scope_start must be in [0, 1], got {self.ema_scope_start}.")
        for name in ("generator_lr", "generator_weight_decay", "generator_min_lr"):
            if getattr(self, name) is not None and not getattr(self, name) >= 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}.")
        if (
            None not in (self.generator_lr, self.generator_min_lr)
            and self.generator_min_lr > self.generator_lr
        ):
            raise ValueError(
                f"--generator_min_lr {self.generator_min_lr} is above --generator_lr {self.generator_lr}; "
                "it is the floor the generator's LR anneals down to."
            )

    def _changed(self, names) -> list[str]:
        defaults = {f.name: f.default for f in fields(self)}
        return [n for n in names if getattr(self, n) != defaults[n]]

    def _check_ignored_flags(self) -> None:
        """Error or warn (see the comment at ADAUTOMIX_ONLY_FLAGS) on flags the chosen --mixup never reads."""
        if self.mix_prob != 1 and (self.learned or self.mixup == "none"):
            why = "it mixes every batch" if self.learned else "nothing is mixed"
            raise ValueError(f"--mix_prob {self.mix_prob} has no effect with --mixup {self.mixup} ({why}).")
        if self.mixup != "timm" and (changed := self._changed(TIMM_ONLY_FLAGS)):
            flags = ", ".join(f"--{n}" for n in changed)
            raise ValueError(
                f"{flags} only apply to --mixup timm, not --mixup {self.mixup} "
                "(the other methods take --mix_alpha / --mix_prob)."
            )
        ignored = self._changed(LEARNED_ONLY_FLAGS) if not self.learned else []
        if self.mixup != "adautomix":
            ignored += self._changed(ADAUTOMIX_ONLY_FLAGS)
        if self.mixup != "automix":
            ignored += self._changed(AUTOMIX_ONLY_FLAGS)
        if self.mixup in ("none", "timm") and self.mix_alpha is not None:
            ignored.append("mix_alpha")
        if ignored:
            logger.warning("--mixup %s ignores %s.", self.mixup, ", ".join(f"--{n}" for n in sorted(ignored)))

    @property
    def learned(self) -> bool:
        return self.mixup in LEARNED_MIXERS

    @classmethod
    def checked(cls, value: MixupArguments | None) -> MixupArguments:
        """`value` if it is a MixupArguments, the defaults for None; anything else (e.g. the string "adautomix")
        is a TypeError saying what to pass."""
        if value is None:
            return cls()
        if not isinstance(value, cls):
            hint = f' (MixupArguments(mixup="{value}"))' if isinstance(value, str) else ""
            raise TypeError(
                f"mixup_args must be a MixupArguments{hint}, not {type(value).__name__} {value!r:.80}."
            )
        return value


@functools.cache
def _literal_choices(cls) -> dict[str, tuple]:
    """The allowed values of each `Literal[...]` field (argparse checks them only for command-line values)."""
    hints = typing.get_type_hints(cls)
    return {n: typing.get_args(t) for n, t in hints.items() if typing.get_origin(t) is Literal}
