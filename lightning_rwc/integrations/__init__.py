"""The callback in other training loops: Hugging Face's ``Trainer`` (:mod:`lightning_rwc.integrations.transformers`).

Each integration drives :class:`~lightning_rwc.RelativeWeightChange` itself (its schedule, tracker and parts) through
:class:`~lightning_rwc.integrations.loop.LoopView`, so runs read back, cluster and show in the RWC tab exactly as
Lightning runs do.
"""
