"""``peerflow graph``: draw an app's workflows (steps as nodes, event types as edges)."""

from __future__ import annotations

from pathlib import Path

import click

from peerflow.cli._base import _EPILOG, CliError, ExitCode, cli
from peerflow.cli._serve import load_app


@cli.command(epilog=_EPILOG)
@click.argument("app")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Write FILE (.svg: one workflow; .html: every workflow); default: SVG on stdout.",
)
@click.option(
    "--workflow",
    "names",
    multiple=True,
    metavar="NAME",
    help="Draw this workflow (repeatable); default: every workflow APP registers.",
)
def graph(app: str, out: Path | None, names: tuple[str, ...]) -> int:
    """Draw APP's workflows as SVG or HTML, with no external assets.

    APP is a module, `module:attr` or a path to a .py file, as for `peerflow serve`.
    An .svg file holds one workflow (pick it with --workflow when APP has several).
    """
    from peerflow.http.graph import graph_of, render_html, render_svg
    from peerflow.registry import default_registry

    registered = load_app(app) or sorted(default_registry().workflows())
    wanted = list(names) or registered
    unknown = [n for n in wanted if default_registry().workflow(n) is None]
    if unknown or not wanted:
        raise CliError(
            f"APP {app!r} has no workflow {', '.join(map(repr, unknown))}"
            if unknown
            else f"APP {app!r} registers no workflow"
        )
    graphs = [graph_of(w) for n in wanted if (w := default_registry().workflow(n)) is not None]
    html = out is not None and out.suffix.lower() in (".html", ".htm")
    if not html and len(graphs) > 1:
        raise CliError(
            f"APP {app!r} has {len(graphs)} workflows ({', '.join(wanted)}); an SVG holds "
            "one: pick it with --workflow, or write --out FILE.html"
        )
    text = render_html(graphs) if html else render_svg(graphs[0], standalone=True)
    if out is None:
        click.echo(text)
        return ExitCode.OK
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror}", ExitCode.USAGE) from exc
    click.echo(f"wrote {out} ({', '.join(g.workflow for g in graphs)})")
    return ExitCode.OK
