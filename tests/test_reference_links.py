"""Citations of docs/reference.md resolve, and no file points outside the repository (pure text, no imports of
the project).

- every "docs/reference.md §N" (also "§N, §M" lists) in a *.py / *.md file names a `## §N ...` heading of
  docs/reference.md;
- the old citation forms ("reference §N", "reference section N"), which named a notes file readers cannot see,
  are gone;
- no file holds a path into the notes kept beside the checkout (the patterns are assembled below so that this
  file does not match itself).
"""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
EXCLUDED_DIRS = {".venv", "output", ".git", "__pycache__", ".pytest_cache", "build", "node_modules"}

HEADING = re.compile(r"^## §(\d+)\b", re.MULTILINE)
# "docs/reference.md §2", "docs/reference.md §4, §7", "docs/reference.md §1 and §2"
CITATION = re.compile(r"docs/reference\.md((?:[ \t]*(?:,|and|/)?[ \t]*§\d+)+)")
OLD_CITATION = re.compile(r"\breference (?:§|section )\d")
OUTSIDE = ("../" + "shared", "shared" + "/notes", "/work/" + "shared")


def _excluded(rel: Path) -> bool:
    return any(part in EXCLUDED_DIRS or part.endswith(".egg-info") for part in rel.parts)


def repo_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files (git), or every file outside the excluded folders."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        rels = [Path(p) for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        rels = [p.relative_to(ROOT) for p in ROOT.rglob("*")]
    return sorted(rel for rel in set(rels)
                  if not _excluded(rel) and (ROOT / rel).is_file() and not (ROOT / rel).is_symlink())


def read_text(rel: Path) -> str | None:
    data = (ROOT / rel).read_bytes()
    if b"\0" in data:  # binary
        return None
    return data.decode("utf-8", errors="replace")


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def sections() -> set[int]:
    return {int(n) for n in HEADING.findall(REFERENCE.read_text(encoding="utf-8"))}


def test_reference_page_has_sections_1_to_7():
    assert REFERENCE.is_file(), "docs/reference.md is missing"
    found = sections()
    assert found >= set(range(1, 8)), f"docs/reference.md lacks the headings ## §{sorted(set(range(1, 8)) - found)}"


def code_and_docs() -> list[tuple[Path, str]]:
    """(path, text) of every *.py and *.md file."""
    texts = [(rel, read_text(rel)) for rel in repo_files() if rel.suffix in (".py", ".md")]
    return [(rel, text) for rel, text in texts if text is not None]


def test_every_citation_names_an_existing_section():
    known = sections()
    bad, count = [], 0
    for rel, text in code_and_docs():
        for m in CITATION.finditer(text):
            for n in re.findall(r"§(\d+)", m.group(1)):
                count += 1
                if int(n) not in known:
                    bad.append(f"{rel}:{line_of(text, m.start())}: §{n} (docs/reference.md has §{sorted(known)})")
    assert not bad, "citations of missing sections:\n" + "\n".join(bad)
    assert count >= 20, f"only {count} citations of docs/reference.md found: is the pattern still right?"


def test_no_old_style_citations():
    bad = []
    for rel, text in code_and_docs():
        bad += [f"{rel}:{line_of(text, m.start())}: {m.group(0)!r}" for m in OLD_CITATION.finditer(text)]
    assert not bad, "cite docs/reference.md §N instead:\n" + "\n".join(bad)


def test_no_path_points_outside_the_repository():
    bad = []
    for rel in repo_files():
        text = read_text(rel)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            bad += [f"{rel}:{number}: {pattern!r} in {line.strip()[:100]!r}" for pattern in OUTSIDE if pattern in line]
    assert not bad, "paths outside the repository:\n" + "\n".join(bad)
