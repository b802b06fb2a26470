"""The documentation: the site in docs/ builds offline with no warnings, and every file the code, the README and
the pages name exists."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = [*REPO.glob("truthprobe_eval/**/*.py"), *REPO.glob("probing/*.py"), *REPO.glob("model_adapters/*.py"),
           *REPO.glob("tasks/**/*.py"), *REPO.glob("benchmarks/*.py"), REPO / "README.md", *REPO.glob("docs/*.md")]


def test_the_site_builds_offline_without_warnings(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    for page in ("methods", "lm_eval", "vlmeval", "chair", "probe_trainers"):
        assert f"{page}/index.html" in built


def test_every_docs_path_the_code_names_exists():
    named = set()
    for source in SOURCES:
        named.update(re.findall(r"docs/[\w./-]+\.(?:md|png)", source.read_text(encoding="utf-8")))
    assert named, "expected the code to name its docs"
    missing = sorted(p for p in named if not (REPO / p).is_file())
    assert not missing, f"named but missing: {missing}"


def test_readme_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)]+)\)", text) if not link.startswith(("http", "#"))]
    assert links and all((REPO / link).exists() for link in links), [x for x in links if not (REPO / x).exists()]
    assert len(text.splitlines()) < 150  # a landing page; the reference lives in docs/


def test_every_environment_variable_is_in_the_one_table():
    """Settings travel through the harnesses' channels; the few environment variables left are listed in one table
    (docs/core.md), and every TRUTHPROBE_* name the code or the tests read is there."""
    code = [*SOURCES, *REPO.glob("tests/*.py"), *REPO.glob("scripts/*.sh")]
    read = set()
    for source in code:
        if source.suffix in (".py", ".sh"):
            read.update(re.findall(r"\bTRUTHPROBE_[A-Z0-9_]+\b", source.read_text(encoding="utf-8")))
    # names of constants that are not variables (task tuples, the comparison's defaults)
    read -= {"TRUTHPROBE_TASKS", "TRUTHPROBE_GROUP", "TRUTHPROBE_DEFAULTS"}
    section = (REPO / "docs/core.md").read_text(encoding="utf-8").split("## Environment variables", 1)[1]
    listed = set(re.findall(r"`(TRUTHPROBE_[A-Z0-9_]+)`", section))
    assert read and read <= listed, f"read but not listed: {sorted(read - listed)}"
    assert listed <= read, f"listed but read nowhere: {sorted(listed - read)}"
    assert len(read) <= 12  # 8 until lmms-eval (its CLI has no --metadata for the data folders)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_no_placeholders_and_every_anchor_exists():
    """No template placeholder left in the prose; every ``page.md#anchor`` link names a heading of that page."""
    pages = [REPO / "README.md", *REPO.glob("docs/*.md")]
    checked = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not re.findall(r"__[A-Z][A-Z_]+__", text), page
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md)#([\w\-]+)\)", text):
            linked = (page.parent / target).resolve()
            headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), flags=re.M)}
            assert anchor in headings, f"{page.name}: {target}#{anchor} names no heading"
            checked += 1
    assert checked >= 5  # the README and the pages do link into each other's sections
