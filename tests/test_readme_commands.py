"""Every command block of the README either runs somewhere that can fail, or says what it needs that this
machine lacks, and the flags it shows are flags the tests pass to the same tool.

Each ```bash block is preceded by one marker line:
  <!-- runs in: PLACE[, PLACE...] -->   PLACE is .ci/run or a test, tests/FILE.py::test_name
  <!-- needs: WHAT -->                  data, released weights or a GPU; the short form runs in the tests
Independently of the marker, every `tools/NAME.py --flag` of a block must appear in a test that runs
tools/NAME.py with that flag, so a command the README shows is a command the suite exercises.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- (runs in|needs): (.+?) -->")
TESTS = {path: path.read_text() for path in (ROOT / "tests").rglob("*.py")}


def command_blocks() -> list[tuple[int, str, str]]:
    """(line number, marker line, block text) of each bash block of README.md."""
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if line.strip() == "```bash":
            end = next(i for i in range(number + 1, len(lines)) if lines[i].strip() == "```")
            before = next((lines[i] for i in range(number - 1, max(number - 4, -1), -1) if MARKER.search(lines[i])), "")
            blocks.append((number + 1, before, "\n".join(lines[number + 1:end])))
    return blocks


def tool_flags(block: str) -> list[tuple[str, str]]:
    """(tool file name, flag) for every flag on a tools/NAME.py command line (continuations joined)."""
    pairs = []
    for command in block.replace("\\\n", " ").splitlines():
        command = command.split("#", 1)[0]
        for tool, args in re.findall(r"tools/(\w+\.py)((?:\s+[^|;&]+)?)", command):
            pairs += [(tool, flag) for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", args)]
    return pairs


BLOCKS = command_blocks()


def test_readme_has_command_blocks():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("line, marker, block", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_block_runs_somewhere_or_names_what_it_needs(line, marker, block):
    found = MARKER.search(marker)
    assert found, f"README.md line {line}: the block has no <!-- runs in: ... --> or <!-- needs: ... --> marker"
    kind, what = found.groups()
    if kind == "runs in":
        for place in (p.strip() for p in what.split(",")):
            path, _, test = place.partition("::")
            assert (ROOT / path).is_file(), f"README.md line {line}: {path} does not exist"
            if test:
                assert re.search(rf"^def {re.escape(test)}\(", (ROOT / path).read_text(), re.M), \
                    f"README.md line {line}: {place} is not a test"
            else:
                assert all(cmd in (ROOT / path).read_text() for cmd in re.findall(r"make \w+", block)), \
                    f"README.md line {line}: {path} does not run the block's make targets"


@pytest.mark.parametrize("line, marker, block", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_block_flags_are_exercised_by_tests(line, marker, block):
    for tool, flag in tool_flags(block):
        users = [p for p, text in TESTS.items() if tool in text and p.name != Path(__file__).name]
        assert any(f'"{flag}"' in TESTS[p] or f" {flag} " in TESTS[p] for p in users), \
            f"README.md line {line}: no test runs tools/{tool} with {flag}"
