"""The docs that are generated from code stay in step with it."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REGENERATE = [sys.executable, str(REPO / "docs" / "cli_reference.py")]


def test_cli_reference_is_up_to_date(tmp_path):
    subprocess.run([*REGENERATE, "--output", str(tmp_path / "cli.md")], check=True, capture_output=True)
    expected = (tmp_path / "cli.md").read_text()
    assert (REPO / "docs" / "cli.md").read_text() == expected, (
        "docs/cli.md is out of date: regenerate it with\n  python docs/cli_reference.py")


def test_cli_reference_has_whole_summaries_and_no_html_entities():
    import re

    text = (REPO / "docs" / "cli.md").read_text()
    assert not re.search(r"&(#x?[0-9a-fA-F]+|[a-z]+);", text)  # &#x27;, &gt; ...
    commands = re.findall(r"^\* `([a-z-]+)`: (.*)$", text.split("**Commands**:")[1].split("##")[0], flags=re.M)
    assert len(commands) >= 10
    for name, line in commands:
        assert not line.endswith("...") and not line.endswith("Fig."), (name, line)
    assert "* `compare-quantify`: The poster's Fig. 8: where each run's attribution falls" in text


def _cli_options() -> dict[str, set[str]]:
    """Every herlev command -> the options it takes (both spellings of a flag pair)."""
    import typer

    from herlev_cli.main import app

    group = typer.main.get_command(app)
    ctx = typer.Context(group)
    options = {}
    for name in group.list_commands(ctx):
        options[name] = {o for p in group.get_command(ctx, name).params for o in (*p.opts, *p.secondary_opts)}
        options[name] |= {"--help"}
    return options


def _script_options() -> set[str]:
    """Options of the project's own scripts (bench/, examples/, docs/): argparse's add_argument("--x" ...)."""
    import re

    found = set()
    for path in [*REPO.glob("bench/*.py"), *REPO.glob("examples/*.py"), *REPO.glob("docs/*.py")]:
        found |= set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", path.read_text()))
    return found


# the launchers' own options, named in docs/distributed.md beside herlev's (accelerate launch, torchrun)
LAUNCHER_OPTIONS = {"--multi_gpu", "--num_processes", "--cpu", "--mpirun_hostfile", "--standalone", "--nproc_per_node"}


def unknown_options(text: str, source: str, commands: dict[str, set[str]], scripts: set[str]) -> list[str]:
    """The options of a markdown text that no command takes; after `herlev COMMAND` on a line, that COMMAND."""
    import re

    anywhere = set().union(*commands.values()) | scripts | LAUNCHER_OPTIONS | {"--version"}
    wrong = []
    for number, line in enumerate(text.splitlines(), 1):
        command = re.search(r"(?:herlev|herlev_cli\.main) ([a-z][a-z-]+)", line)
        for match in re.finditer(r"(?<![\w-])--[a-z][\w-]*", line):
            option, where = match.group(), f"{source}:{number}"
            if command and command.group(1) in commands and match.start() > command.start():
                if option not in commands[command.group(1)]:
                    wrong.append(f"{where}: herlev {command.group(1)} has no {option}")
            elif option not in anywhere:
                wrong.append(f"{where}: no command takes {option}")
    return wrong


def test_every_option_the_docs_name_exists_in_the_cli():
    """An option written in README.md or docs/*.md is one `herlev` (or the project's scripts) takes; after
    `herlev COMMAND` on a line, one that COMMAND takes."""
    commands, scripts = _cli_options(), _script_options()
    wrong = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        wrong += unknown_options(path.read_text(), path.name, commands, scripts)
    assert not wrong, "\n".join(wrong)


def test_the_option_check_catches_an_unknown_option():
    commands = _cli_options()
    assert "--workers" in commands["train"] and "--threshold" in commands["predict"]
    text = ("herlev train --data DIR --epochs 3\n"
            "herlev predict cells/ --epochs 3\n"  # an option of another command
            "Pass `--frobnicate` to go faster.\n")
    assert unknown_options(text, "x.md", commands, set()) == ["x.md:2: herlev predict has no --epochs",
                                                              "x.md:3: no command takes --frobnicate"]


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
    # the network and what reads a run never import the trainer, even inside a function
    readers = ("herlev_fa.model", "herlev_fa.runs", "herlev_fa.prediction", "herlev_fa.evaluation",
               "herlev_fa.explanation")
    assert not [(a, b) for a, b in edges if a.startswith(readers) and b.startswith("herlev_fa.training")]
    assert graph.mermaid() in (REPO / "docs" / "architecture.md").read_text(), (
        "docs/architecture.md's module graph is out of date: paste the output of python docs/import_graph.py")


DEVELOPMENT_HISTORY = (r"\bissues? \d|\bthe issue'?s?\b|\bno session\b|\bour machines?\b|\.\./shared/|/work/"
                       r"|development machine")


def test_docs_speak_to_users_not_of_how_the_project_was_built():
    """No issue numbers, development sessions or paths outside the project in README.md and docs/."""
    import re

    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.search(DEVELOPMENT_HISTORY, line, flags=re.IGNORECASE)
            if match:
                found.append(f"{path.name}:{number}: {match.group()!r}")
    assert not found, "\n".join(found)
