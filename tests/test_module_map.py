"""The module maps of README.md and docs/internals.md name the modules the code has, and only those."""

from __future__ import annotations

import re

from tests.conftest import REPO

CODE_FOLDERS = ("beam_m2v", "beam_m2v/transforms", "pipelines")


def modules() -> set[str]:
    """Every module file of the library and the programs, as a path from the repository root."""
    return {
        path.relative_to(REPO).as_posix()
        for folder in CODE_FOLDERS
        for path in (REPO / folder).glob("*.py")
        if path.name != "__init__.py"
    }


def module_table(text: str) -> str:
    """The 'Module layout' section of docs/internals.md."""
    start = text.index("## Module layout")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def named_modules(table: str) -> set[str]:
    """Module paths named in the first column of the table's rows; ``pipelines/`` rows name bare files."""
    named: set[str] = set()
    section = ""
    for line in table.splitlines():
        if line.startswith("### "):
            section = "pipelines/" if "program" in line.lower() else ""
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        for name in re.findall(r"`([\w/]+\.py)`", first_cell):
            if "/" in name:
                named.add(name)
                folder = name.rsplit("/", 1)[0]
            else:
                named.add(f"{section or folder + '/'}{name}")
    return named


def test_internals_names_every_module_and_no_other() -> None:
    named = named_modules(module_table((REPO / "docs" / "internals.md").read_text(encoding="utf-8")))
    assert modules() - named == set(), "modules missing from docs/internals.md"
    assert named - modules() == set(), "docs/internals.md names modules that do not exist"


def test_paths_in_the_readme_map_exist() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Where things are")
    section = readme[start : readme.index("\n## ", start + 1)]
    for row in (line for line in section.splitlines() if line.startswith("| `")):
        folders = re.findall(r"`([\w/]+/)`", row.split("|")[1])
        assert folders, row
        for folder in folders:
            assert (REPO / folder).is_dir(), folder
        for name in re.findall(r"`([\w]+\.py)`", row.split("|")[2]):
            assert (REPO / folders[0] / name).is_file(), f"{folders[0]}{name}"
