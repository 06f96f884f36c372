"""The docs cannot rot silently: every link from ``docs/`` into the package must still point at what it names.

A link into the code has the form ``[name](../numpymnv2/functional/batchnorm.py#L74-L108)`` (or ``#L105`` for
one line). The text starts with the name of a function, class or method (``Class.method``), optionally in
backticks and followed by more words: ``[`batchnorm_backward`, the dx line](...)``. The link is valid when

* the file exists and has the lines,
* the name is defined in that file (found with :mod:`ast`, so a name in a comment or string does not count), and
* either the range is **exactly** the definition (from its ``def``/``class`` line or first decorator to its last
  line), or it lies **inside** the definition (the lines of one equation in a function's body) and the link's
  title quotes the code on the range's first line and, for a range of several lines, after `` ... ``, the code
  on its last line: ``[`batchnorm_backward`, dx](...#L107-L108 "M = dy.shape[0] ... dx = (gamma")``.
  A function that grows or moves, or an equation that moves or grows within its function, breaks the link; then
  ``python tests/test_docs.py --fix`` moves each range to where its name and title now are.

Links to other files in the repository (figures, other pages) must point at files that exist.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
LINK = re.compile(r'!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)(?:\s+"([^"]*)")?\)')
LINES = re.compile(r"^L(\d+)(?:-L(\d+))?$")
NAME = re.compile(r"^`?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")
ELLIPSIS = " ... "          # separates the quotes of a range's first and last line in a link title


def title_quotes(title: str) -> tuple[str, str | None]:
    """The code quoted for a range's first line and, when the title has two quotes, for its last line."""
    first, sep, last = title.partition(ELLIPSIS)
    return first, (last if sep else None)


def doc_files():
    return sorted(DOCS.rglob("*.md"))


def strip_code_blocks(text: str) -> str:
    """Blank out fenced code blocks (keeping line numbers) so example code is not read as links."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def links(path: Path):
    """``(line number, text, target, title)`` of every Markdown link or image in ``path`` (title may be None)."""
    found = []
    for lineno, line in enumerate(strip_code_blocks(path.read_text()).splitlines(), start=1):
        for m in LINK.finditer(line):
            found.append((lineno, m.group(1), m.group(2), m.group(3)))
    return found


def all_links():
    return [(doc, *link) for doc in doc_files() for link in links(doc)]


def is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target) is not None or target.startswith("#")


@lru_cache(maxsize=None)
def definitions(py_file: Path) -> dict:
    """Qualified name -> list of ``(first line, def line, last line)`` for every function and class in the file."""
    tree = ast.parse(py_file.read_text(), filename=str(py_file))
    spans: dict = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                spans.setdefault(qual, []).append((first, child.lineno, child.end_lineno))
                visit(child, qual + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return spans


def check_code_link(doc: Path, text: str, target: str, title: str | None = None) -> str | None:
    """Why the link is broken, or None when it is fine."""
    file_part, _, fragment = target.partition("#")
    py_file = (doc.parent / file_part).resolve()
    if not py_file.is_file():
        return f"file {file_part} does not exist"
    if not fragment:
        return None
    m = LINES.match(fragment)
    if m is None:
        return f"fragment #{fragment} is not of the form #L12 or #L12-L34"
    start = int(m.group(1))
    end = int(m.group(2) or start)
    n_lines = len(py_file.read_text().splitlines())
    if not 1 <= start <= end <= n_lines:
        return f"lines {start}-{end} are outside {file_part} ({n_lines} lines)"
    name_match = NAME.match(text.strip())
    if name_match is None:
        return f"link text {text!r} does not start with the name of a function or class"
    name = name_match.group(1)
    spans = definitions(py_file)
    if name not in spans:
        return f"{name} is not defined in {file_part}"
    lines = py_file.read_text().splitlines()[start - 1:end]
    where = ", ".join(f"L{first}-L{last}" for first, _, last in spans[name])
    for first, def_line, last in spans[name]:
        if start in (first, def_line) and end == last:
            return None                      # the whole definition
        if first <= start and end <= last:  # lines inside the definition: they must still hold the quoted code
            if not title:
                return (f"lines {start}-{end} are inside {name} ({where}) but not all of it; quote the code they "
                        f'point at in the link title: (path#L{start}-L{end} "first line{ELLIPSIS}last line")')
            head, tail = title_quotes(title)
            if head not in lines[0]:
                return f"line {start} of {file_part} no longer holds {head!r} ({name} is at {where})"
            if end > start and tail is None:
                return (f"lines {start}-{end}: the title quotes only the first line; add{ELLIPSIS!r} and the code on "
                        f"line {end}, so the end of the range is checked too")
            if tail is not None and tail not in lines[-1]:
                return f"line {end} of {file_part} no longer holds {tail!r}, the end of the range ({name} is at {where})"
            return None
    return f"lines {start}-{end} are not {name} or within it ({name} is at {where} in {file_part})"


def test_docs_exist():
    assert (DOCS / "walkthrough.md").is_file()
    assert (DOCS / "README.md").is_file()


def test_walkthrough_links_to_code():
    code_links = [target for _, _, target, _ in links(DOCS / "walkthrough.md") if ".py#L" in target]
    # the walkthrough's point is that every equation is tied to a line range: a handful would mean it lost them
    assert len(code_links) >= 25, code_links


@pytest.mark.parametrize("doc,lineno,text,target,title", [
    pytest.param(*link, id=f"{link[0].name}:{link[1]}") for link in all_links() if not is_external(link[3])])
def test_link_target_exists(doc, lineno, text, target, title):
    file_part = target.partition("#")[0]
    resolved = (doc.parent / file_part).resolve()
    assert resolved.exists(), f"{doc.relative_to(REPO)}:{lineno}: [{text}]({target}): {file_part} does not exist"
    if file_part.endswith(".py"):
        problem = check_code_link(doc, text, target, title)
        assert problem is None, f"{doc.relative_to(REPO)}:{lineno}: [{text}]({target}): {problem}"


def test_walkthrough_numbers_match_the_package():
    """The running example's counts, quoted in the walkthrough, are what the package computes."""
    import numpymnv2 as mn

    text = (DOCS / "walkthrough.md").read_text()
    model = mn.MobileNetV2()
    rows = {row.name: row for row in mn.summary(model, resolution=224).rows}
    block = model.features[3]
    assert (block.inp, block.hidden_dim, block.oup, block.stride, block.use_res_connect) == (24, 144, 24, 1, True)
    assert block.num_parameters() == 8832 and "8,832 trainable parameters" in text
    assert rows["features.3"].madds == 25_740_288 and "25{,}740{,}288" in text


@pytest.mark.parametrize("generated", sorted((DOCS / "figures").glob("*/ablation.md")), ids=lambda p: p.parent.name)
def test_ablation_tables_on_the_page_are_the_generated_ones(generated):
    """docs/ablations.md quotes the tables `numpymnv2 ablate` wrote next to its figures, row for row."""
    page = (DOCS / "ablations.md").read_text()
    rows = [line for line in generated.read_text().splitlines() if line.startswith("|")]
    assert rows, generated
    missing = [row for row in rows if row not in page]
    assert not missing, f"rows of {generated.relative_to(REPO)} not in docs/ablations.md: {missing}"


# -- the checker itself, on made-up pages and code ---------------------------------------------------------

@pytest.fixture
def fake_repo(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "ops.py").write_text(
        "import functools\n"            # 1
        "\n"                            # 2
        "def forward(x):\n"             # 3
        "    y = x + 1\n"               # 4
        "    return y\n"                # 5
        "\n"                            # 6
        "class Block:\n"                # 7
        "    @functools.cache\n"        # 8
        "    def backward(self):\n"     # 9
        "        return 2\n"            # 10
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    return docs / "page.md"


@pytest.mark.parametrize("text,target,title,ok", [
    ("`forward`", "../pkg/ops.py#L3-L5", None, True),           # the whole function
    ("forward, the add", "../pkg/ops.py#L4", "y = x + 1", True),  # one line inside it, still holding the code
    ("forward, the add", "../pkg/ops.py#L5", "y = x + 1", False),  # the code is not on that line
    ("forward, the add", "../pkg/ops.py#L4-L5", "return y", False),  # nor on the range's first line
    ("forward, the body", "../pkg/ops.py#L4-L5", "y = x + 1 ... return y", True),  # both ends quoted
    ("forward, the body", "../pkg/ops.py#L4-L5", "y = x + 1", False),  # a range must quote its last line too
    ("forward, the body", "../pkg/ops.py#L4-L5", "y = x + 1 ... return x", False),  # which must still be there
    ("forward, the add", "../pkg/ops.py#L4", "y = x + 1 ... y = x", True),  # one line: both quotes on it
    ("forward, the add", "../pkg/ops.py#L4", None, False),       # a part of a function must quote its code
    ("forward", "../pkg/ops.py#L3-L4", None, False),            # the head but not the whole
    ("forward", "../pkg/ops.py#L3-L9", None, False),            # runs past its end
    ("forward", "../pkg/ops.py#L2-L5", None, False),            # starts before it
    ("Block.backward", "../pkg/ops.py#L8-L10", None, True),      # from the decorator
    ("Block.backward", "../pkg/ops.py#L9-L10", None, True),
    ("Block", "../pkg/ops.py#L7-L10", None, True),
    ("backward", "../pkg/ops.py#L9-L10", None, False),           # methods need their class
    ("missing", "../pkg/ops.py#L3-L5", None, False),
    ("forward", "../pkg/ops.py#L40-L50", None, False),           # beyond the end of the file
    ("forward", "../pkg/nope.py#L3-L5", None, False),
    ("the code", "../pkg/ops.py#L3-L5", None, False),            # no name to check
    ("forward", "../pkg/ops.py#line3", None, False),
])
def test_check_code_link(fake_repo, text, target, title, ok):
    assert (check_code_link(fake_repo, text, target, title) is None) == ok


def test_links_skip_code_blocks_and_find_images(tmp_path):
    page = tmp_path / "p.md"
    page.write_text('see [a](x.py#L1 "q = 1")\n```\n[b](y.py#L2)\n```\n![fig](f.png) and [`c.d`](z.py)\n')
    assert links(page) == [(1, "a", "x.py#L1", "q = 1"), (5, "fig", "f.png", None), (5, "`c.d`", "z.py", None)]


# -- maintenance: `python tests/test_docs.py --fix` moves line ranges to where their code now is -------------

def relink(doc: Path) -> int:
    """Rewrite the line ranges of ``doc``'s code links from their names and titles; return how many changed.

    A link to a whole definition gets the definition's current lines. A link with a title starts at the first
    line inside the named definition that holds the title's first quote and ends at the next line holding its
    last quote (or keeps its length when the title has one quote). Links whose name or title is gone are left
    alone for a human (the test still names them).
    """
    text = doc.read_text()
    changed = 0

    def fix(m):
        nonlocal changed
        label, target, title = m.group(1), m.group(2), m.group(3)
        file_part, _, fragment = target.partition("#")
        py_file = (doc.parent / file_part).resolve()
        frag = LINES.match(fragment)
        name = NAME.match(label.strip())
        if not (py_file.is_file() and frag and name and name.group(1) in definitions(py_file)):
            return m.group(0)
        start = int(frag.group(1))
        end = int(frag.group(2) or start)
        first, _, last = definitions(py_file)[name.group(1)][0]
        if not title:
            new_start, new_end = first, last
        else:
            source = py_file.read_text().splitlines()
            head, tail = title_quotes(title)
            hits = [i for i in range(first, last + 1) if head in source[i - 1]]
            if not hits:
                return m.group(0)
            new_start = hits[0]
            if tail is None:
                new_end = min(last, new_start + end - start)
            else:
                ends = [i for i in range(new_start, last + 1) if tail in source[i - 1]]
                if not ends:
                    return m.group(0)
                new_end = ends[0]
        if (new_start, new_end) == (start, end):
            return m.group(0)
        changed += 1
        lines = f"L{new_start}" if new_start == new_end else f"L{new_start}-L{new_end}"
        return m.group(0).replace(f"#{fragment}", f"#{lines}", 1)

    new_text = LINK.sub(fix, text)
    if changed:
        doc.write_text(new_text)
    return changed


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--fix"]:
        sys.exit("usage: python tests/test_docs.py --fix    (then run pytest tests/test_docs.py and read the diff)")
    definitions.cache_clear()
    for page in doc_files():
        n = relink(page)
        if n:
            print(f"{page.relative_to(REPO)}: moved {n} link(s)")
