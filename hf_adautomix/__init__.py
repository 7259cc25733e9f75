"""hf_adautomix: AdAutoMix, AutoMix and the classic mixup family for the Hugging Face training stack."""

__version__ = "0.1.0"

from .arguments import MixupArguments, ModelArguments  # noqa: E402
from .backbones import build_model, wrap_classifier  # noqa: E402
from .data import DataTrainingArguments  # noqa: E402
from .modeling import EMASchedule, MixupModel  # noqa: E402
from .trainer import AdAutoMixTrainer  # noqa: E402

__all__ = [
    "AdAutoMixTrainer",
    "DataTrainingArguments",
    "EMASchedule",
    "MixupArguments",
    "MixupModel",
    "ModelArguments",
    "build_model",
    "wrap_classifier",
]
