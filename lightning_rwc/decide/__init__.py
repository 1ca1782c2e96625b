"""Decisions from RWC values: plain functions of the values, testable without a Trainer.

- :class:`~lightning_rwc.decide.freeze.FreezePolicy`: which blocks have stopped learning and may be frozen (by a
  :class:`~lightning_rwc.decide.freeze.FreezeRule`);
- :class:`~lightning_rwc.decide.health.HealthCheck`: dead layers (not moving while the rest does) and runaway
  layers (moving far more than the rest).
"""

from lightning_rwc.decide.freeze import FreezePolicy, FreezeRule
from lightning_rwc.decide.health import HealthCheck

__all__ = ["FreezePolicy", "FreezeRule", "HealthCheck"]
