"""What the one builder is asked for (`NetworkRequest`: network_init.m's arguments and this port's
choices) and what a family's builder hands back to it (`FamilyNet`: the layer list before the common
steps). Used by `reproduce.models.builder` and the two family builders
(`reproduce.models.matconvnet_nets`, `reproduce.models.torchvision_nets`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from legacy_compat.simplenn import LayerSpec

__all__ = ["NetworkRequest", "FamilyNet"]


@dataclass(frozen=True, kw_only=True)
class NetworkRequest:
    """network_init.m's arguments (labelNum, the model, dropoutRate) and the pretrained model, plus
    the choices of this port (`reproduce.models.builder.network_init` documents each).

    pretrained: a MatConvNet model file or its LayerSpecs (the MatConvNet family), a torchvision
    state_dict file or the dict itself (the torchvision family), or None for a random trunk."""

    label_num: int
    model: str
    dropout_rate: float
    pretrained: str | Path | Sequence[LayerSpec] | dict | None = None
    loss_type: str = "ourloss_logistic"
    image_size: int | None = None
    seed: int | None = None
    multiclass_adjust: bool = False
    input_guard: bool = True
    weight_init: str | None = None
    interpretable: bool = True


@dataclass
class FamilyNet:
    """A family builder's result: the ICNN's layer list (trunk + head + loss 'ourloss_logistic'), how
    many leading layers come from the trunk, the input size, and the family's own meta entries
    (appended after the common ones)."""

    specs: list[LayerSpec]
    pretrained_count: int
    image_size: int
    meta: dict[str, Any] = field(default_factory=dict)
