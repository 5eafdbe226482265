"""Every command block of the README and of the docs/*.md pages either runs somewhere that can fail, or says what
it needs that this machine lacks, and the flags it shows are flags the tests pass to the same tool.

Each ```bash block is preceded (within 3 lines) by one marker line:
  <!-- runs in: PLACE[, PLACE...] -->   PLACE is .ci/run or a test, tests/FILE.py::test_name
  <!-- needs: WHAT -->                  data, released weights or a GPU; the short form runs in the tests
Independently of the marker, every `tools/NAME.py --flag` of a block must appear in a test that runs
tools/NAME.py with that flag, so a command the documentation shows is a command the suite exercises.

The pages are also a set a newcomer can walk: every relative link resolves to a file inside the repository (and
its #anchor to a heading of that file), and the README links every docs page. Ids and messages name the file and
the line.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- (runs in|needs): (.+?) -->")
TESTS = {path: path.read_text() for path in (ROOT / "tests").rglob("*.py")}
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def command_blocks(page: Path) -> list[tuple[str, int, str, str]]:
    """(page name, line number, marker line, block text) of each bash block of a page."""
    lines = page.read_text().splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if line.strip() == "```bash":
            end = next(i for i in range(number + 1, len(lines)) if lines[i].strip() == "```")
            before = next((lines[i] for i in range(number - 1, max(number - 4, -1), -1) if MARKER.search(lines[i])), "")
            blocks.append((name(page), number + 1, before, "\n".join(lines[number + 1:end])))
    return blocks


def tool_flags(block: str) -> list[tuple[str, str]]:
    """(tool file name, flag) for every flag on a tools/NAME.py command line (continuations joined)."""
    pairs = []
    for command in block.replace("\\\n", " ").splitlines():
        command = command.split("#", 1)[0]
        for tool, args in re.findall(r"tools/(\w+\.py)((?:\s+[^|;&]+)?)", command):
            pairs += [(tool, flag) for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", args)]
    return pairs


def prose_lines(page: Path) -> list[tuple[int, str]]:
    """(line number, text) of a page's lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append((number, line))
    return out


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces to hyphens."""
    found = set()
    for _, line in prose_lines(page):
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def links() -> list[tuple[str, int, str]]:
    """(page name, line number, target) of every relative link of the pages."""
    out = []
    for page in PAGES:
        for number, line in prose_lines(page):
            out += [(name(page), number, target) for target in LINK.findall(line)
                    if not re.match(r"[a-z]+:", target)]  # http:, https:, mailto: are not files
    return out


BLOCKS = [block for page in PAGES for block in command_blocks(page)]
BLOCK_IDS = [f"{page}:line{line}" for page, line, _, _ in BLOCKS]
LINKS = links()


def test_readme_has_command_blocks():
    """The set-up block and one quick start per task (detect, segment, pre-train, own data, export, memory)."""
    assert len([b for b in BLOCKS if b[0] == "README.md"]) >= 7
    assert len(BLOCKS) >= 15  # the docs pages carry the rest


@pytest.mark.parametrize("page, line, marker, block", BLOCKS, ids=BLOCK_IDS)
def test_block_runs_somewhere_or_names_what_it_needs(page, line, marker, block):
    found = MARKER.search(marker)
    assert found, f"{page} line {line}: the block has no <!-- runs in: ... --> or <!-- needs: ... --> marker"
    kind, what = found.groups()
    if kind == "runs in":
        for place in (p.strip() for p in what.split(",")):
            path, _, test = place.partition("::")
            assert (ROOT / path).is_file(), f"{page} line {line}: {path} does not exist"
            if test:
                assert re.search(rf"^def {re.escape(test)}\(", (ROOT / path).read_text(), re.M), \
                    f"{page} line {line}: {place} is not a test"
            else:
                assert all(cmd in (ROOT / path).read_text() for cmd in re.findall(r"make \w+", block)), \
                    f"{page} line {line}: {path} does not run the block's make targets"


@pytest.mark.parametrize("page, line, marker, block", BLOCKS, ids=BLOCK_IDS)
def test_block_flags_are_exercised_by_tests(page, line, marker, block):
    for tool, flag in tool_flags(block):
        users = [p for p, text in TESTS.items() if tool in text and p.name != Path(__file__).name]
        assert any(f'"{flag}"' in TESTS[p] or f" {flag} " in TESTS[p] for p in users), \
            f"{page} line {line}: no test runs tools/{tool} with {flag}"


@pytest.mark.parametrize("page, line, target", LINKS, ids=[f"{p}:line{n}:{t}" for p, n, t in LINKS])
def test_link_resolves_inside_the_repository(page, line, target):
    path, _, anchor = target.partition("#")
    file = (ROOT / page).parent / path if path else ROOT / page
    resolved = file.resolve()
    assert resolved == ROOT or ROOT in resolved.parents, f"{page} line {line}: {target} points outside the repository"
    assert resolved.exists(), f"{page} line {line}: {target}: no such file"
    if anchor:
        assert resolved.suffix == ".md", f"{page} line {line}: {target}: an anchor into a file that is not a page"
        assert anchor in anchors(resolved), f"{page} line {line}: {target}: no heading {anchor!r} in {path or page}"


def test_readme_links_every_docs_page():
    linked = {(ROOT / target.partition("#")[0]).resolve() for page, _, target in LINKS if page == "README.md"}
    missing = [name(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md: no link to {missing}"


@pytest.mark.parametrize("page", PAGES[1:], ids=[name(p) for p in PAGES[1:]])
def test_docs_page_says_what_it_covers(page):
    """A title, then one line (a paragraph) saying what the page covers, before any section."""
    lines = page.read_text().splitlines()
    assert lines and lines[0].startswith("# "), f"{name(page)} line 1: no title"
    body = next((i for i in range(1, len(lines)) if lines[i].strip()), None)
    assert body is not None and not lines[body].startswith(("#", "```", "|", "<!--")), \
        f"{name(page)} line {body + 1 if body else 1}: the page does not start by saying what it covers"
