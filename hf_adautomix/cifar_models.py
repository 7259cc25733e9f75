"""CIFAR variants of ResNet (3x3 stride-1 stem, no max-pool), as the AdAutoMix paper trains on 32x32 images.

This file is self-contained (it imports only torch and transformers) because `save_pretrained` copies it next
to an exported transformers checkpoint, so that `AutoModelForImageClassification.from_pretrained(dir,
trust_remote_code=True)` rebuilds the same architecture on a machine without hf_adautomix. With hf_adautomix
imported, the classes are registered with the Auto classes and no remote code is needed.
"""

from __future__ import annotations

from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification


class CifarResNetConfig(ResNetConfig):
    model_type = "cifar_resnet"


class CifarResNetForImageClassification(ResNetForImageClassification):
    """transformers ResNet whose stem is a 3x3 stride-1 conv + BN + act and has no max-pool."""

    config_class = CifarResNetConfig

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        stem = self.resnet.embedder.embedder  # ResNetConvLayer(conv 7x7/2, BN, act)
        stem.convolution = nn.Conv2d(
            config.num_channels, config.embedding_size, 3, stride=1, padding=1, bias=False
        )
        self.resnet.embedder.pooler = nn.Identity()
        self.post_init()
