"""Sphinx configuration: Markdown pages (MyST) and the API reference from the docstrings (autodoc, napoleon).

``make docs`` writes the sample outputs (``python docs/examples.py``), then builds in strict mode: any warning, a
broken link between pages or a reference to an object of the package that does not exist fails the build.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sphinx.ext.napoleon.docstring import GoogleDocstring

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
    ("py:.*", r"(pathlib|argparse|enum|tensorboard|triton|transformers)\..*"),
    ("py:class", r"(Norm|Kernel|ParamSelection|AdapterMode|Source|Rule|Change)"),
    ("py:class", r"(HistogramTime|FreezeMode|FreezeOrder|Method|Emit|Scalars|Opener)"),
    ("py:.*", r"(TensorBoardLogger|SummaryWriter|Figure|TBContext|TBPlugin|base_plugin\..*|MisconfigurationException)"),
    ("py:.*", r"(.*\.)?_\w+"),  # private names appear in signatures, and are not documented
    ("py:.*", r"(Tensor|Module|Parameter|Optimizer|Trainer|LightningModule|Callback|Logger|Path|PathLike|Pattern)"),
    ("py:.*", r"(Any|Literal|Sequence|Mapping|Iterable|Iterator|Callable|Hashable|Self|T|optional)"),
]


def resolve_public_names(app, env, node, contnode):
    """Resolve a reference to a re-exported name (``lightning_rwc.parts.History``) to where it is documented.

    ``lightning_rwc.parts.History`` is documented as ``lightning_rwc.parts.history.History``.
    """
    import importlib

    target = node.get("reftarget", "")
    if node.get("refdomain") != "py":
        return None
    if not target.startswith("lightning_rwc."):  # a short name, in the module of the docstring it appears in
        target = f"{node.get('py:module') or ''}.{target}"
        if not target.startswith("lightning_rwc."):
            return None
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module, then the object's real home
        try:
            obj = getattr(importlib.import_module(".".join(parts[:cut])), parts[cut])
        except (ImportError, AttributeError):
            continue
        home = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        real = ".".join([home, *parts[cut + 1 :]])
        break
    else:
        return None
    if real == target or not real.startswith("lightning_rwc."):
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], real, node, contnode)


def _attribute_docstring_as_prose(self):
    """Read an attribute's docstring as prose.

    Napoleon takes ``text: more`` at its start for ``type: description``; the types come from the annotations.
    """
    lines = [self._lines.next(), *self._dedent(self._consume_to_end())]
    return self._format_field("", "", self.__class__(lines, self._config).lines())


GoogleDocstring._parse_attribute_docstring = _attribute_docstring_as_prose


def setup(app):
    """Sphinx's hook for this project."""
    app.connect("missing-reference", resolve_public_names)
