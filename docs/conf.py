"""Sphinx configuration: Markdown pages (MyST) and the API reference from the docstrings (autodoc, napoleon).

``make docs`` writes the sample outputs (``python docs/examples.py``), then builds in strict mode: any warning, a
broken link between pages or a reference to an object of the package that does not exist fails the build.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

project = "lightning-rwc"
author = "the lightning-rwc authors"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_generated"]
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]
html_theme = "furo"
html_title = "lightning-rwc"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

nitpicky = True  # a reference to an object of the package that is not documented fails the build
nitpick_ignore_regex = [
    ("py:.*", r"(torch|np|numpy|nn|pl|lightning|typing|typing_extensions|collections|re|os|abc|dataclasses)\b.*"),
    ("py:.*", r"(Tensor|Module|Parameter|Trainer|LightningModule|Callback|Logger|Path|PathLike|Pattern)"),
    ("py:.*", r"(Any|Literal|Sequence|Mapping|Iterable|Iterator|Callable|Hashable|Self|T|optional)"),
]


def resolve_public_names(app, env, node, contnode):
    """Resolve a reference to a re-exported name (``lightning_rwc.parts.History``) to where it is documented.

    ``lightning_rwc.parts.History`` is documented as ``lightning_rwc.parts.history.History``.
    """
    import importlib

    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("lightning_rwc."):
        return None
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    real = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    if real == target or not real.startswith("lightning_rwc."):
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], real, node, contnode)


def setup(app):
    """Sphinx's hook for this project."""
    app.connect("missing-reference", resolve_public_names)
