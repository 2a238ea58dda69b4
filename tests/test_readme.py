"""Every code block in README.md runs (python and bash) or parses (yaml).

Blocks run in document order, one test per ``## `` section, in one scratch directory.
An HTML comment on the line before a block's fence tells the test what to do with it:

* ``<!-- readme-test: file NAME -->`` — write the block to NAME (before any section runs);
* ``<!-- readme-test: background -->`` — a bash block that serves: start it, wait for its
  ``serving on`` line, stop it at the end of the section;
* ``<!-- readme-test: exit N -->`` — a bash block expected to exit with N;
* ``<!-- readme-test: skip REASON -->`` — not run (the install commands; see below).

Any other ``python`` block runs as a script and must exit 0; any other ``bash`` block
runs with ``bash -e -o pipefail`` and must exit 0. The README's ports 50051-50053 are
replaced: a serving block listens on port 0 and the port it prints is used by the blocks
after it; a port no block serves on is one held bound (and refusing) for the section.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clitools import ROOT, Served, cli_env, refused_port

README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
PORTS = ("50051", "50052", "50053")
DEMO_COMMAND = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && peerflow demo"
)
TEST_COMMAND = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && scripts/test"
)
LINT_COMMAND = (
    "pip install -e '.[dev]' && ruff check src tests && ruff format --check src tests && mypy"
)

_PORT_PATTERN = re.compile("|".join(PORTS))
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->$")


@dataclasses.dataclass
class Block:
    section: str
    lang: str
    text: str
    line: int
    action: str = "run"
    arg: str = ""


def parse(markdown: str) -> list[Block]:
    blocks: list[Block] = []
    section = "(top)"
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        fence = _FENCE.match(line)
        if fence is None:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        block = Block(section, fence.group(1), "\n".join(body) + "\n", start + 1)
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = _MARKER.match(lines[prev].strip()) if prev >= 0 else None
        if marker is not None:
            block.action, block.arg = marker.group(1), marker.group(2)
        blocks.append(block)
    return blocks


BLOCKS = parse(README.read_text(encoding="utf-8"))
SECTIONS = list(dict.fromkeys(b.section for b in BLOCKS if b.lang in ("python", "bash")))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("readme")
    for block in BLOCKS:
        if block.action == "file":
            (path / block.arg).write_text(block.text)
    return path


def substitute(text: str, ports: dict[str, str]) -> str:
    # One pass, so a real port that happens to read like a README port is not rewritten.
    return _PORT_PATTERN.sub(lambda m: ports.get(m.group(), m.group()), text)


def _readme_ports(text: str) -> list[str]:
    return [p for p in PORTS if p in text]


def run_block(block: Block, workdir: Path, ports: dict[str, str], index: int) -> None:
    where = f"README.md line {block.line} ({block.section})"
    text = substitute(block.text, ports)
    env = cli_env()
    if block.lang == "python":
        script = workdir / f"_readme_block_{index}.py"
        script.write_text(text)
        argv = [sys.executable, script.name]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", text]
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=90)
    expected = int(block.arg) if block.action == "exit" else 0
    assert proc.returncode == expected, (
        f"{where}: exit {proc.returncode}, expected {expected}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    if block.action == "exit":
        assert proc.stderr.startswith("peerflow: error: "), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("section", SECTIONS)
def test_section(section: str, workdir: Path) -> None:
    ports: dict[str, str] = {}  # README port -> the real one, for this section
    with contextlib.ExitStack() as stack:
        for index, block in enumerate(BLOCKS):
            if block.section != section or block.lang not in ("python", "bash"):
                continue
            if block.action in ("skip", "file"):
                continue
            if block.action == "background":
                (listen,) = _readme_ports(block.text)  # one server per serving block
                command = substitute(block.text, {**ports, listen: "0"}).replace("\\\n", " ")
                served = stack.enter_context(
                    Served([command], env=cli_env(), cwd=workdir, shell=True)
                )
                ports[listen] = served.address.rsplit(":", 1)[1]
                continue
            for unserved in _readme_ports(block.text):
                if unserved not in ports:
                    ports[unserved] = str(stack.enter_context(refused_port()))
            run_block(block, workdir, ports, index)


def test_every_block_is_covered() -> None:
    langs = {b.lang for b in BLOCKS}
    assert langs <= {"python", "bash", "yaml", "text"}, langs
    assert sum(b.lang == "python" and b.action == "run" for b in BLOCKS) >= 10
    skipped = [b for b in BLOCKS if b.action == "skip"]
    assert [b.text.strip() for b in skipped] == [DEMO_COMMAND, TEST_COMMAND, LINT_COMMAND]


def test_the_lint_command_names_tools_the_dev_extra_installs() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    dev = " ".join(extras["dev"])
    for tool in ("ruff", "mypy"):
        assert tool in dev and tool in LINT_COMMAND


def test_the_two_commands_are_what_ci_runs() -> None:
    """The README's test command is what .ci/run does, step by step."""
    ci = CI_RUN.read_text()
    readme = README.read_text(encoding="utf-8")
    assert f"```bash\n{DEMO_COMMAND}\n```" in readme
    assert f"```bash\n{TEST_COMMAND}\n```" in readme
    assert "python3 -m venv" in ci
    assert "/bin/activate" in ci
    assert "pip install --quiet -e '.[test]'" in ci
    assert ci.rstrip().splitlines()[-1] == 'CI="${CI:-true}" scripts/test'
    script = (ROOT / "scripts" / "test").read_text()
    assert script.rstrip().splitlines()[-1] == 'python -m pytest "$@"'
    assert "apt-get update" in script and "apt-get install -y -q postgresql" in script
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'peerflow = "peerflow.cli:main"' in scripts


def _yaml_documents() -> Iterator[tuple[Block, str]]:
    for block in BLOCKS:
        if block.lang == "yaml":
            for doc in block.text.split("\n---\n"):
                yield block, doc


def test_yaml_blocks_parse() -> None:
    docs = list(_yaml_documents())
    assert docs
    try:
        import yaml
    except ImportError:
        yaml = None
    for block, doc in docs:
        where = f"README.md line {block.line}"
        assert "\t" not in doc, where
        top = [ln for ln in doc.splitlines() if ln and not ln.startswith((" ", "#"))]
        assert any(ln.startswith("apiVersion: ") for ln in top), where
        assert any(ln.startswith("kind: ") for ln in top), where
        for ln in doc.splitlines():
            indent = len(ln) - len(ln.lstrip(" "))
            assert indent % 2 == 0, f"{where}: odd indentation: {ln!r}"
        if yaml is not None:
            parsed = yaml.safe_load(doc)
            assert isinstance(parsed, dict) and parsed["kind"], where
