"""`MixupModel`: classifier adapter + mixer (+ EMA teacher) in one `nn.Module`.

Trainer, DDP, autocast, the optimizer and checkpoint/resume all see one module, so everything the method needs
(generator, mix head, teacher, step counter) is saved, restored and kept in sync without extra plumbing
(hf-ecosystem §0). The training step runs entirely inside `forward` (autocast and DDP only cover `forward`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .backbones import ClassifierAdapter, wrap_classifier
from .mixers import Mixer, NoMix, cross_entropy


@dataclass
class EMASchedule:
    """Momentum ξ_t of the EMA teacher at optimizer step t of T (released `CosineScheduleHook`, §5).

    t < a·T: ξ₀; a·T ≤ t ≤ T: ξ_end − (ξ_end − ξ₀)·(1 + cos(π t / T)) / 2 (t/T, not (t − aT)/((1−a)T), as released).
    With `warmup`, ξ_t is also capped at 1 − (1 + t)^(−2/3) (timm ModelEmaV3's warm-up), so that on a run of a few
    hundred steps the teacher follows the online model instead of staying near its initialisation.
    """

    momentum: float = 0.999
    momentum_end: float = 0.999999
    scope_start: float = 0.1
    warmup: bool = True
    warmup_power: float = 2 / 3

    def __call__(self, step: int, total_steps: int) -> float:
        total = max(int(total_steps), 1)
        if step < self.scope_start * total:
            m = self.momentum
        else:
            m = (
                self.momentum_end
                - (self.momentum_end - self.momentum) * (1 + math.cos(math.pi * step / total)) / 2
            )
        if self.warmup:
            m = min(m, 1 - (1 + step) ** -self.warmup_power)
        return m

    def describe(self) -> str:
        base = (
            f"released cosine schedule ξ {self.momentum} → {self.momentum_end} over [{self.scope_start}·T, T]"
        )
        return base + (
            ", capped by the warm-up 1 − (1 + t)^(−2/3)" if self.warmup else " (exact, no warm-up)"
        )


class MixupModel(nn.Module):
    """The module Trainer trains.

    Args:
        classifier: the user's model or its adapter.
        mixer: a `Mixer` (default: no mixing).
        ema: keep an EMA teacher of the classifier (learned mixers always have one).
        ema_schedule: the teacher's momentum schedule.
    """

    def __init__(
        self,
        classifier: nn.Module,
        mixer: Mixer | None = None,
        *,
        ema: bool = False,
        ema_schedule: EMASchedule | None = None,
    ):
        super().__init__()
        self.classifier: ClassifierAdapter = wrap_classifier(classifier)
        self.mixer = mixer if mixer is not None else NoMix(num_classes=self.classifier.num_classes)
        ema = ema or self.mixer.learned
        self.teacher = copy.deepcopy(self.classifier).requires_grad_(False) if ema else None
        if self.teacher is not None:
            self.teacher.eval()
        self.ema_schedule = ema_schedule or EMASchedule()
        # Optimizer steps taken so far. A buffer, so checkpoints carry it: the EMA schedule and the AdAutoMix
        # adversarial/cooperative alternation are functions of it and resume exactly.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._step_cache = (
            -1,
            0,
        )  # (step._version, value): reading a GPU buffer each step would sync the device
        self.total_steps = 1  # set by the trainer at train begin
        self.channels_last = False  # set by `to_channels_last()`
        self.eval_ema = False  # evaluate the teacher instead of the online classifier
        self.eval_mix_head = False  # evaluate the learned mixer's mix head instead of the model's own head
        self.last_terms: dict[str, torch.Tensor] = {}
        # Per-pass backward (learned mixers): back-propagate each online-classifier pass inside the forward as soon
        # as its loss is built, freeing its activations before the next pass (peak memory ≈ one pass instead of
        # all of them; same gradients). `early_backward=False` keeps one graph for one backward of the total.
        # `backward_fn` is installed by the trainer for the duration of one `training_step` (it scales like
        # Trainer: 1/GA, through `accelerator.backward`); without it (a bare forward) there is one graph.
        self.early_backward = True
        self.backward_fn = None
        # Under DDP the returned loss's graph must reach every trainable parameter (find_unused_parameters=False):
        # set by the trainer; adds 0·Σp so that the parameters back-propagated early are reduced as well.
        self.full_graph_loss = False
        if self.mixer.learned:
            self.mixer.attach(self.classifier, self.teacher)

    # -- modes -----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        # Trainer calls model.train() every step; the teacher's mode is set explicitly by the mixer around each
        # of its forwards (the release runs them in train mode), never by Trainer (hf-ecosystem §0.5).
        if self.teacher is not None:
            self.teacher.train(False)
        return self

    # -- forward ---------------------------------------------------------------------------------------------
    def to_channels_last(self) -> MixupModel:
        """Channels-last weights and inputs (faster convolutions on recent GPUs and CPUs with oneDNN)."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if self.training:
            if labels is None:
                raise ValueError("Training needs `labels` in each batch (integer class ids).")
            backward = self.backward_fn if self.early_backward and torch.is_grad_enabled() else None
            if self.mixer.learned:
                kwargs = {"backward": backward} if backward is not None else {}
                terms = self.mixer(
                    pixel_values,
                    labels,
                    self.classifier,
                    teacher=self.teacher,
                    step=self.step_count,
                    **kwargs,
                )
            else:
                backward = None
                terms = self.mixer(pixel_values, labels, self.classifier)
            self.last_terms = {k: v.detach() for k, v in terms.items() if k != "loss"}
            loss = terms["loss"]
            if backward is not None and self.full_graph_loss:
                # DDP's autograd hooks are idle during its forward, so the early backwards only accumulate locally
                # (as under `no_sync`); the backward of the returned loss then fires the hook of every parameter,
                # and each is all-reduced once with its whole gradient. Adding exact zeros changes no value.
                params = [p for p in self.parameters() if p.requires_grad]
                if params:
                    loss = loss + 0.0 * torch.stack([p.sum() for p in params]).sum().to(loss.dtype)
            return {"loss": loss}
        model = self.teacher if self.eval_ema and self.teacher is not None else self.classifier
        if self.eval_mix_head:
            if not self.has_mix_head:
                raise ValueError(
                    f"eval_mix_head needs a learned mixer with its own mix head; the mixer "
                    f"{type(self.mixer).__name__} has none (a classic mixer, or --share_mix_head)."
                )
            # The head the mixer trains on mixed images (h_mix_q / h_mix_k, §1), on the same pooled features.
            head = self.mixer.head_k(model) if model is self.teacher else self.mixer.head_q(model)
            logits = head(model.forward_features(pixel_values).pooled)
        else:
            logits = model(pixel_values)
        if labels is None:
            return {"logits": logits}
        return {"loss": cross_entropy(logits, labels), "logits": logits}

    @property
    def has_mix_head(self) -> bool:
        """Whether the mixer trains a head of its own for mixed images (AutoMix/AdAutoMix without
        --share_mix_head), which evaluation then reports next to the model's own head (§8, §12.6)."""
        return getattr(self.mixer, "mix_head", None) is not None

    # -- EMA -------------------------------------------------------------------------------------------------
    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.classifier, self.teacher)] if self.teacher is not None else []
        if hasattr(self.mixer, "ema_pairs"):
            pairs += self.mixer.ema_pairs()
        return pairs

    @property
    def step_count(self) -> int:
        """`step` as an int, read from the device only when the buffer was written outside `advance_step`
        (a checkpoint load, a DDP broadcast)."""
        if self._step_cache[0] != self.step._version:
            self._step_cache = (self.step._version, int(self.step))
        return self._step_cache[1]

    @torch.no_grad()
    def advance_step(self) -> None:
        count = self.step_count + 1
        self.step += 1
        self._step_cache = (self.step._version, count)

    def current_momentum(self) -> float:
        return self.ema_schedule(self.step_count, self.total_steps)

    @torch.no_grad()
    def update_ema(self) -> float:
        """p_k ← ξ_t·p_k + (1 − ξ_t)·p_q for every parameter; called once after each optimizer step.

        Written with `_foreach_lerp_` rather than `AveragedModel`/timm's `ModelEmaV3` because the teacher lives
        inside this module (so DDP, checkpoints and resume cover it) and its momentum follows the step buffer.
        Buffers: a learned mixer's teacher keeps its own BN statistics (its own train-mode forwards, §5); a plain
        EMA teacher never runs in train mode, so it copies the online buffers (timm's convention).
        """
        m = self.current_momentum()
        for online, teacher in self.ema_pairs():
            t_params = [p for p in teacher.parameters()]
            o_params = [p.detach() for p in online.parameters()]
            if t_params:
                torch._foreach_lerp_(t_params, o_params, 1.0 - m)
            if not self.mixer.learned:
                for tb, ob in zip(teacher.buffers(), online.buffers()):
                    tb.copy_(ob)
        self.advance_step()
        return m

    # -- export ----------------------------------------------------------------------------------------------
    def export_adapter(self, which: str = "auto") -> ClassifierAdapter:
        if which not in ("auto", "ema", "online"):
            raise ValueError(f"export_model must be auto, ema or online; got '{which}'.")
        if which == "ema" and self.teacher is None:
            raise ValueError("--export_model ema needs an EMA teacher: add --ema (or use a learned mixer).")
        return self.teacher if which != "online" and self.teacher is not None else self.classifier
