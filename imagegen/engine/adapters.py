"""LoRA adapters on one loaded pipeline: loaded on first use through diffusers' PEFT
integration, kept in a least-recently-used set, activated per pipeline call.

A pipeline's adapters live on its modules (the denoiser's and text encoders' layers), which
every mode's pipeline shares, so activation is per model and runs on the model's pipeline
thread, right before each call: a call without adapters runs with them disabled, which PEFT
does by skipping their layers, so its images are byte-identical to those of a pipeline that
never loaded one.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from typing import Any

from imagegen.schemas import Lora
from models.adapters import WEIGHTS

logger = logging.getLogger(__name__)


def adapter_name(tag: str) -> str:
    """A PEFT adapter name for the stored adapter ``tag``: PEFT keeps them as module keys."""
    return re.sub(r"\W", "_", tag)


class Adapters:
    def __init__(self, pipeline: Any, paths: dict[str, str], capacity: int) -> None:
        """``paths``: each stored adapter's directory by ``name:version``."""
        self.pipeline = pipeline
        self.paths = paths
        self.capacity = capacity
        self.loaded: OrderedDict[str, str] = OrderedDict()  # tag -> PEFT name, oldest first

    def activate(self, loras: list[Lora]) -> None:
        """Apply exactly ``loras`` at their scales to the next call; none when empty."""
        if not loras:
            if self.loaded:
                self.pipeline.disable_lora()
            return
        names = [self._load(lora.name, keep={lora.name for lora in loras}) for lora in loras]
        self.pipeline.enable_lora()
        self.pipeline.set_adapters(names, adapter_weights=[lora.scale for lora in loras])

    def _load(self, tag: str, keep: set[str]) -> str:
        if tag in self.loaded:
            self.loaded.move_to_end(tag)
            return self.loaded[tag]
        over = max(0, len(self.loaded) + 1 - self.capacity)
        for old in [loaded for loaded in self.loaded if loaded not in keep][:over]:
            self.pipeline.delete_adapters(self.loaded.pop(old))
            logger.info("unloaded LoRA %s (at most %d stay loaded)", old, self.capacity)
        started = time.perf_counter()
        name = adapter_name(tag)
        self.pipeline.load_lora_weights(self.paths[tag], weight_name=WEIGHTS, adapter_name=name)
        self.loaded[tag] = name
        logger.info("loaded LoRA %s in %.3fs", tag, time.perf_counter() - started)
        return name
