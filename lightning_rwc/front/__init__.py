"""The frozen front of a model, cached: where a model is cut, the store of outputs, and the forward that reuses them.

==========  =========================================================================================
module      its job
==========  =========================================================================================
``cut``     where a model can be cut after its frozen front (the rule, and which models), the halves
``store``   outputs by input fingerprint, within a byte budget, spilled to memory-mapped files
``cache``   :class:`FrontCache`: the forward that skips the front for inputs seen before
==========  =========================================================================================
"""

from lightning_rwc.front.cache import FrontCache
from lightning_rwc.front.cut import SUPPORTED, CutError, cut

__all__ = ["SUPPORTED", "CutError", "FrontCache", "cut"]
