"""Measuring relative weight change where the weights live: plain PyTorch, usable without Lightning.

=====================  ==========================================================================================
module                 its job
=====================  ==========================================================================================
``functional``         the formula, once: element sums for each norm, ratios from sums, accumulation dtype
``settings``           :class:`MeasureSettings`: what is measured and how, checked once
``updates``            the change an optimizer step applied, read from the optimizer's state (SGD, Adam, AdamW)
``source``             measuring from those updates after each step, with no copy of the weights
``tracker``            :class:`WeightChangeTracker`: which parameters, their baselines, one measurement per step
``measurement``        :class:`Measurement`: one measurement on its way to the host, the single transfer
``groups``             one backend per device and dtype of the tracked weights
``select``             which tensors: filters, their validation, names without wrapper attributes
``adapters``           LoRA layers (PEFT) as one row each: the change of their effective weight, from the factors
``sharding``           sharded parameters (``DTensor``): local shards, replicas, the one all-reduce, rank agreement
``watch``              noticing cheaply that the model's parameters may have changed
``backends``           how a group of tensors is measured: CPU batches, multi-tensor kernels, the Triton kernel,
                       a snapshot in host memory
=====================  ==========================================================================================
"""

from lightning_rwc.measure.functional import NORMS, Norm, relative_weight_change
from lightning_rwc.measure.measurement import Measurement
from lightning_rwc.measure.select import PARAM_SELECTIONS, ParamSelection, select_parameters
from lightning_rwc.measure.settings import SOURCES, MeasureSettings, Source
from lightning_rwc.measure.tracker import WeightChangeTracker

__all__ = [
    "NORMS",
    "MeasureSettings",
    "Measurement",
    "PARAM_SELECTIONS",
    "Norm",
    "ParamSelection",
    "SOURCES",
    "Source",
    "WeightChangeTracker",
    "relative_weight_change",
    "select_parameters",
]
