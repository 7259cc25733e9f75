"""`MixupModel`: classifier adapter + mixer (+ EMA teacher) in one `nn.Module`.

Trainer, DDP, autocast, the optimizer and checkpoint/resume all see one module, so everything the method needs
(generator, mix head, teacher, step counter) is saved, restored and kept in sync without extra plumbing
(hf-ecosystem §0). The training step runs entirely inside `forward` (autocast and DDP only cover `forward`): the
train forward returns `{"loss", **terms}` (the back-propagated total and the named, detached loss terms), the eval
forward the logits of one head or, with `eval_all_heads`, of every head.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
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
        # Optimizer steps taken so far, a host int (no device sync to read it); checkpointed as extra state (see
        # `get_extra_state`): the EMA schedule and the AdAutoMix adversarial/cooperative alternation are functions
        # of it and resume exactly.
        self.step = 0
        self.register_load_state_dict_pre_hook(_read_step_buffer)
        self.total_steps = 1  # set by the trainer at train begin
        self.channels_last = False  # set by `to_channels_last()`
        self.eval_ema = False  # evaluate the teacher instead of the online classifier
        self.eval_mix_head = False  # evaluate the learned mixer's mix head instead of the model's own head
        self.eval_all_heads = (
            False  # the eval forward returns every head's logits (set by the trainer's evaluate)
        )
        # Per-pass backward (learned mixers): back-propagate each online-classifier pass inside the forward as soon
        # as its loss is built, freeing its activations before the next pass (peak memory ≈ one pass instead of
        # all of them; same gradients). `early_backward=False` keeps one graph for one backward of the total.
        # The backward is lent by `per_pass_backward` for the duration of one step; without it (a bare forward)
        # there is one graph.
        self.early_backward = True
        self.backward_fn: Callable[[torch.Tensor], None] | None = None
        self.full_graph_loss = False
        if self.mixer.learned:
            self.mixer.attach(self.classifier, self.teacher)

    # -- checkpointed step counter ---------------------------------------------------------------------------
    def get_extra_state(self) -> torch.Tensor:
        # A tensor, not an int: Trainer writes `state_dict()` with safetensors, which stores tensors only.
        return torch.tensor(self.step, dtype=torch.long)

    def set_extra_state(self, state) -> None:
        self.step = int(state)

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

    @contextlib.contextmanager
    def per_pass_backward(
        self, fn: Callable[[torch.Tensor], None], *, full_graph: bool = False
    ) -> Iterator[MixupModel]:
        """Lend `fn` (a backward of one scalar loss, e.g. the trainer's scaled `accelerator.backward`) to the train
        forwards run inside the context, for the learned mixers' per-pass backward (see `early_backward`).

        Args:
            fn: back-propagates a loss term of the forward.
            full_graph: under DDP (`find_unused_parameters=False`) the returned loss's graph must reach every
                trainable parameter: the forward then adds 0·Σp, so that the parameters back-propagated early
                are reduced as well.
        """
        self.backward_fn, self.full_graph_loss = fn, full_graph
        try:
            yield self
        finally:
            self.backward_fn, self.full_graph_loss = None, False

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if self.training:
            if labels is None:
                raise ValueError("Training needs `labels` in each batch (integer class ids).")
            return self._train_forward(pixel_values, labels)
        out = (
            self._all_logits(pixel_values) if self.eval_all_heads else {"logits": self._logits(pixel_values)}
        )
        if labels is None:
            return out
        return {"loss": cross_entropy(out["logits"], labels), **out}

    def _train_forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{"loss": the total to back-propagate, **the mixer's named loss terms, detached}`."""
        backward = self.backward_fn if self.early_backward and torch.is_grad_enabled() else None
        if self.mixer.learned:
            kwargs = {"backward": backward} if backward is not None else {}
            terms = self.mixer(
                pixel_values, labels, self.classifier, teacher=self.teacher, step=self.step, **kwargs
            )
        else:
            backward = None
            terms = self.mixer(pixel_values, labels, self.classifier)
        loss = terms["loss"]
        if backward is not None and self.full_graph_loss:
            # DDP's autograd hooks are idle during its forward, so the early backwards only accumulate locally
            # (as under `no_sync`); the backward of the returned loss then fires the hook of every parameter,
            # and each is all-reduced once with its whole gradient. Adding exact zeros changes no value.
            params = [p for p in self.parameters() if p.requires_grad]
            if params:
                loss = loss + 0.0 * torch.stack([p.sum() for p in params]).sum().to(loss.dtype)
        return {"loss": loss, **{k: v.detach() for k, v in terms.items() if k != "loss"}}

    def _logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The logits of the head `eval_ema` / `eval_mix_head` select."""
        model = self.teacher if self.eval_ema and self.teacher is not None else self.classifier
        if not self.eval_mix_head:
            return model(pixel_values)
        if not self.has_mix_head:
            raise ValueError(
                f"eval_mix_head needs a learned mixer with its own mix head; the mixer "
                f"{type(self.mixer).__name__} has none (a classic mixer, or --share_mix_head)."
            )
        # The head the mixer trains on mixed images (h_mix_q / h_mix_k, §1), on the same pooled features.
        head = self.mixer.head_k(model) if model is self.teacher else self.mixer.head_q(model)
        return head(model.forward_features(pixel_values).pooled)

    def _all_logits(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's logits from one forward of each backbone, in `eval_heads` order: `logits` (online),
        `ema_logits` (teacher), `mix_head_logits` and `ema_mix_head_logits` (the mix heads, §8)."""
        logits = {}
        for name, model in (("", self.classifier), ("ema", self.teacher)):
            if model is None:
                continue
            feats = model.forward_features(pixel_values)  # `feats.logits` is `model(pixel_values)`
            logits[name] = feats.logits
            if self.has_mix_head:
                head = self.mixer.head_k(model) if model is self.teacher else self.mixer.head_q(model)
                logits[f"{name}_mix_head".lstrip("_")] = head(feats.pooled)
        return {f"{name}_logits".lstrip("_"): logits[name] for name in self.eval_heads}

    @property
    def eval_heads(self) -> list[str]:
        """The heads an evaluation reports, in order: "" (online), "ema", "mix_head", "ema_mix_head"."""
        heads = ["", "ema"] if self.teacher is not None else [""]
        if self.has_mix_head:
            heads += [f"{h}_mix_head" if h else "mix_head" for h in heads]
        return heads

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

    def advance_step(self) -> None:
        self.step += 1

    def current_momentum(self) -> float:
        return self.ema_schedule(self.step, self.total_steps)

    @torch.no_grad()
    def update_ema(self) -> float:
        """p_k ← ξ_t·p_k + (1 − ξ_t)·p_q for every parameter; called once after each optimizer step.

        Written with `_foreach_lerp_` rather than `AveragedModel`/timm's `ModelEmaV3` because the teacher lives
        inside this module (so DDP, checkpoints and resume cover it) and its momentum follows the step counter.
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


def _read_step_buffer(module, state_dict, prefix, *_args) -> None:
    """Load-state-dict pre-hook: a checkpoint written before the step counter became extra state holds it as a
    `step` buffer; read it as the extra state."""
    old = state_dict.pop(prefix + "step", None)
    if old is not None:
        state_dict.setdefault(prefix + "_extra_state", old)
