"""The README and the documentation: every code block runs on its own, the README is short and starts with a working
example, its links lead somewhere, and the strict documentation build fails on a broken reference."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))

import examples  # noqa: E402

README = examples.ROOT / "README.md"
BLOCKS = [block for page in examples.pages() for block in examples.blocks(page)]


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_every_code_block_runs_on_its_own(block, tmp_path):
    examples.run(block, tmp_path)


@pytest.mark.slow
def test_the_readme_example_clusters_its_layers_into_at_least_one_cluster(tmp_path):
    (example,) = [block for block in examples.blocks(README) if block.language == "python"]
    printed = examples.run(example, tmp_path)
    clusters = int(re.search(r"\*\*(\d+) clusters\*\* of 7 layers", printed).group(1))
    assert clusters >= 1
    assert (tmp_path / "lightning_logs" / "version_0").is_dir()


def test_the_readme_is_short_and_reaches_a_working_example_early():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200
    assert lines.index("```python") < 40
    assert not re.search(r"\b(issue|target|former|design card)\b", README.read_text(), flags=re.I)


def test_the_readmes_relative_links_lead_to_files_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link]
    assert local, "the README links to the documentation"
    for link in local:
        assert (examples.ROOT / link).exists(), link


def test_every_sample_output_in_the_docs_comes_from_the_block_before_it():
    for page in examples.pages():
        included = re.findall(r"\{literalinclude\} (\S+)", page.read_text())
        generated = [block.output for block in examples.blocks(page) if block.output is not None]
        assert [(page.parent / name).resolve() for name in included] == generated, page
        assert all(path.parent == examples.GENERATED for path in generated)


@pytest.mark.slow
def test_the_strict_docs_build_fails_on_a_broken_reference(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(examples.DOCS, docs, ignore=shutil.ignore_patterns("_build"))
    (tmp_path / "benchmarks").symlink_to(examples.ROOT / "benchmarks")  # figures the pages show
    (docs / "_generated").mkdir(exist_ok=True)
    for block in BLOCKS:  # the outputs' contents do not matter here
        if block.output is not None:
            (docs / "_generated" / block.output.name).write_text("output\n")
    with (docs / "troubleshooting.md").open("a") as page:
        page.write("\nSee {py:class}`lightning_rwc.NoSuchClass` and [a page](guide/no-such-page.md).\n")
    sphinx = Path(sys.executable).with_name("sphinx-build")
    command = [str(sphinx), "-q", "-W", "--keep-going", "-n", "-b", "html", str(docs), str(tmp_path / "html")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=examples.ROOT)
    assert done.returncode != 0
    assert "lightning_rwc.NoSuchClass" in done.stderr and "guide/no-such-page.md" in done.stderr
    assert done.stderr.count("WARNING") == 2  # the copy of the real pages builds without a warning


def public_callables() -> dict[str, object]:
    """Every public class and function the package defines, by name (names defined twice, differently: left out)."""
    import importlib
    import inspect
    import pkgutil

    import lightning_rwc

    found: dict[str, object] = {}
    twice = set()
    for module_info in pkgutil.walk_packages(lightning_rwc.__path__, "lightning_rwc."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            defined_here = getattr(value, "__module__", None) == module.__name__
            if name.startswith("_") or not defined_here or not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            if found.get(name, value) is not value:
                twice.add(name)
            found[name] = value
    return {name: value for name, value in found.items() if name not in twice}


def calls_in(text: str, names: set[str]) -> list[str]:
    """Each ``Name(...)`` in ``text`` whose name is in ``names``, with its balanced parentheses."""
    calls = []
    for match in re.finditer(r"(?<![\w.])(" + "|".join(sorted(names)) + r")\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, min(len(text), match.end() + 2000)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        calls.append(text[match.start() : end + 1])
    return calls


def test_every_argument_named_in_docstrings_and_docs_exists():
    import ast
    import inspect

    callables = public_callables()
    texts = {path: path.read_text() for path in [README, *examples.ROOT.joinpath("docs").rglob("*.md")]}
    for path in examples.ROOT.joinpath("lightning_rwc").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts[f"{path}:{node.lineno}"] = node.value
    wrong, checked = [], 0
    for where, text in texts.items():
        for call in calls_in(text, set(callables)):
            try:
                parsed = ast.parse(call.replace("...", "None"), mode="eval").body
            except SyntaxError:
                continue  # prose such as "Name(the model)": no arguments to check
            signature = inspect.signature(callables[parsed.func.id])
            if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
                continue
            checked += 1
            wrong += [
                f"{where}: {call} has no argument {k.arg!r}"
                for k in parsed.keywords
                if k.arg is not None and k.arg not in signature.parameters
            ]
    assert not wrong, "\n".join(wrong)
    assert checked > 100  # the check reads the calls it should
