"""The docs that are generated from code stay in step with it."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REGENERATE = [sys.executable, "-m", "typer", "herlev_cli.main", "utils", "docs", "--name", "herlev",
              "--title", "herlev command reference"]


def test_cli_reference_is_up_to_date(tmp_path):
    subprocess.run([*REGENERATE, "--output", str(tmp_path / "cli.md")], check=True, capture_output=True)
    expected = (tmp_path / "cli.md").read_text()
    assert (REPO / "docs" / "cli.md").read_text() == expected, (
        "docs/cli.md is out of date: regenerate it with\n  python -m typer herlev_cli.main utils docs --name herlev "
        "--title 'herlev command reference' --output docs/cli.md")


def test_readme_links_resolve():
    import re

    readme = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target


def test_architecture_graph_matches_the_imports():
    import importlib.util

    spec = importlib.util.spec_from_file_location("import_graph", REPO / "docs" / "import_graph.py")
    graph = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graph)
    edges = graph.edges()
    assert ("herlev_fa.training.loop", "herlev_fa.data.feed") in edges  # the graph reads real imports
    assert not any(b.startswith("herlev_cli") for a, b in edges if a.startswith("herlev_fa"))  # nothing imports the CLI
    assert graph.mermaid() in (REPO / "docs" / "architecture.md").read_text(), (
        "docs/architecture.md's module graph is out of date: paste the output of python docs/import_graph.py")
