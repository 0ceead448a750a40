"""Write docs/cli.md, the command reference, from the `herlev` command line itself.

Typer's `typer ... utils docs` with two fixes: the command list gives each command's whole
first line (click shortens it to 45 characters, or cuts it at a period such as "Fig."), and
help texts are plain markdown, without the HTML entities (`&#x27;`, `&gt;`) Typer writes.

    python docs/cli_reference.py            # rewrites docs/cli.md
    python docs/cli_reference.py --output X
"""

from __future__ import annotations

import argparse
import html
import re
from pathlib import Path

TITLE = "herlev command reference"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "cli.md"


def summary(help_text: str) -> str:
    """A command's summary: the first paragraph of its help, on one line."""
    return " ".join(help_text.strip().split("\n\n")[0].split())


def reference() -> str:
    """The markdown of docs/cli.md."""
    import typer
    from typer.cli import get_docs_for_click

    from herlev_cli.main import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command)
    text = get_docs_for_click(obj=command, ctx=ctx, name="herlev", title=TITLE)
    for name in command.list_commands(ctx):  # the command list: whole summaries, not click's short help
        sub = command.get_command(ctx, name)
        text = re.sub(rf"^\* `{re.escape(name)}`: .*$", lambda _: f"* `{name}`: {summary(sub.help or '')}", text,
                      count=1, flags=re.M)
    text = re.sub(r"^\* `--(install|show)-completion`: .*\n", "", text, flags=re.M)  # the shell's business, not ours
    return html.unescape(text).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    args.output.write_text(reference(), encoding="utf-8")


if __name__ == "__main__":
    main()
