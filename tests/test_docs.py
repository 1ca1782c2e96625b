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
