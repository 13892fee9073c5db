"""How fast a model turns work into images on this replica, learned as it runs: seconds per
megapixel-step, one estimate per size class."""

from __future__ import annotations

import math

from imagegen.schemas import GenerationParameters

# Weight of the newest measurement in the running estimate.
RATE_WEIGHT = 0.3


def size_class(parameters: GenerationParameters) -> int:
    """Images within a factor of about 1.4 in pixels share a measured rate."""
    return round(math.log2(parameters.width * parameters.height))


class RateEstimate:
    """Small images cost more per pixel (fixed per-step costs), so one rate for all sizes
    misjudges a mix of them (measured with sd-tiny on two cores: 1.58 s per unit at 64x64,
    0.29 at 256x256)."""

    def __init__(self) -> None:
        self._rates: dict[int, float] = {}

    @property
    def known(self) -> bool:
        return bool(self._rates)

    def seconds_per_work(self, parameters: GenerationParameters) -> float | None:
        """The rate measured for images of this size class, or the nearest class's; None
        before any measurement."""
        if not self._rates:
            return None
        size = size_class(parameters)
        return self._rates[min(self._rates, key=lambda known: abs(known - size))]

    def record(self, parameters: GenerationParameters, seconds_per_work: float) -> None:
        """A measured rate for ``parameters``' size class, weighted into the estimate."""
        size = size_class(parameters)
        rate = self._rates.get(size)
        self._rates[size] = (
            seconds_per_work if rate is None else rate + RATE_WEIGHT * (seconds_per_work - rate)
        )
