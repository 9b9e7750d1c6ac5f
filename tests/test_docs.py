"""The package cites the paper or docs inside the repository, never files outside it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sources_cite_only_documents_inside_the_repository():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "dynamic_atss").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "METHOD.md" in line
    ]
    assert not offenders, f"cite the paper or docs/method.md instead of METHOD.md: {offenders}"
    cited = {"docs/method.md"}
    for doc in cited:
        assert (ROOT / doc).is_file(), doc
