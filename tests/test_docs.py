"""README.md and docs/*.md: every command they name exists and accepts the long options written after it,
every relative link resolves, and README stays a front page (at most 160 lines)."""
from __future__ import annotations

import contextlib
import io
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 160

# `python -m neuroprobe COMMAND`; also python3, .venv/bin/python, and `torchrun [its options] -m neuroprobe COMMAND`
COMMAND = re.compile(r"(?:\bpython3?|\btorchrun\b[^`\n]*?)\s+-m\s+neuroprobe\s+([a-z][a-z0-9-]*)")
LONG_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
SHELL_END = re.compile(r"&&|\|\||;|\s\|\s|\s#")  # where one shell command of a line stops


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _split(text: str) -> tuple[list[tuple[int, str]], str]:
    """The lines of fenced code blocks as commands (first line, backslash continuations joined), and the text
    outside code blocks (code-block lines left empty, so offsets keep their line numbers)."""
    commands, prose = [], []
    inside, pending, start = False, "", 0
    for number, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            inside, pending = not inside, ""
            prose.append("")
            continue
        if not inside:
            prose.append(line)
            continue
        prose.append("")
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append((start, pending + line))
        pending = ""
    return commands, "\n".join(prose)


def _commands_in(text: str, line: int) -> list[tuple[int, str, list[str]]]:
    """(line, command, long options) of each neuroprobe command in one shell command or code span; a command's
    options run up to the next neuroprobe command or the end of the shell command (&&, ;, |, # comment)."""
    matches = list(COMMAND.finditer(text))
    found = []
    for i, match in enumerate(matches):
        rest = text[match.end():matches[i + 1].start() if i + 1 < len(matches) else len(text)]
        rest = SHELL_END.split(rest)[0]
        found.append((line + text.count("\n", 0, match.start()), match.group(1), LONG_OPTION.findall(rest)))
    return found


def mentions(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, command, long options written after it) for every neuroprobe command a page names."""
    code, prose = _split(path.read_text(encoding="utf-8"))
    found = [m for line, command in code for m in _commands_in(command, line)]
    # inline code spans (which may wrap onto the next line), then what is left of each prose line
    for span in re.finditer(r"`([^`]+)`", prose):
        found += _commands_in(span.group(1), _line_of(prose, span.start()))
    bare = re.sub(r"`[^`]+`", lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)
    for number, line in enumerate(bare.split("\n"), 1):
        found += _commands_in(line, number)
    return found


def _all_mentions() -> list[tuple[str, int, str, list[str]]]:
    return [(str(page.relative_to(ROOT)), line, command, options)
            for page in PAGES for line, command, options in mentions(page)]


@lru_cache(maxsize=1)
def _subparsers() -> dict:
    from neuroprobe.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices


@lru_cache(maxsize=None)
def _help_status(command: str):
    from neuroprobe.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return main([command, "--help"])
        except SystemExit as exc:
            return exc.code


def test_the_scanner_sees_commands():
    """README's two commands, and a torchrun command over three lines whose options before -m are torchrun's."""
    readme = {command for _, command, _ in mentions(ROOT / "README.md")}
    assert {"extract", "report"} <= readme, f"README.md: the two commands' extract and report not found in {readme}"
    sample = "torchrun --nnodes 2 --nproc-per-node gpu \\\n  -m neuroprobe extract --data d \\\n  --layers l --out o\n"
    found = [m for line, command in _split(f"```bash\n{sample}```\n")[0] for m in _commands_in(command, line)]
    assert found == [(2, "extract", ["--data", "--layers", "--out"])], found


def test_every_command_exists():
    bad = [f"{page}:{line}: 'python -m neuroprobe {command} --help' exits with {_help_status(command)!r}"
           for page, line, command, _ in _all_mentions() if _help_status(command) not in (0, None)]
    assert not bad, "commands named in README.md or docs/ that do not exist:\n" + "\n".join(bad)


def test_every_option_exists():
    parsers, bad = _subparsers(), []
    for page, line, command, options in _all_mentions():
        if command not in parsers:
            continue  # test_every_command_exists names it
        known = {o for action in parsers[command]._actions for o in action.option_strings}
        bad += [f"{page}:{line}: 'python -m neuroprobe {command}' has no option {option}"
                for option in options if option not in known]
    assert not bad, "options written after a command that its parser does not accept:\n" + "\n".join(bad)


def test_relative_links_resolve():
    bad = []
    for page in PAGES:
        _, prose = _split(page.read_text(encoding="utf-8"))
        for match in LINK.finditer(prose):
            target = match.group(1)
            if re.match(r"(https?:|mailto:|#)", target):
                continue
            if not (page.parent / target.split("#", 1)[0]).exists():
                bad.append(f"{page.relative_to(ROOT)}:{_line_of(prose, match.start())}: {target!r} does not exist "
                           f"relative to {page.parent.relative_to(ROOT).as_posix() or '.'}/")
    assert not bad, "relative links that do not resolve:\n" + "\n".join(bad)


def test_readme_is_a_front_page():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}: the reference goes in docs/"


def test_every_docs_page_is_linked():
    """README.md links docs/README.md; README.md or docs/README.md links every other page of docs/."""
    linked = {(page.parent / m.group(1).split("#", 1)[0]).resolve()
              for page in (ROOT / "README.md", ROOT / "docs" / "README.md") if page.exists()
              for m in LINK.finditer(_split(page.read_text(encoding="utf-8"))[1])}
    missing = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, "docs pages linked from neither README.md nor docs/README.md: " + ", ".join(missing)
