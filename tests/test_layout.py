"""Tests by module: every module `dynamic_atss/<sub>/<module>.py` has its tests in `tests/test_<module>.py`, or in
`tests/test_<sub>_<module>.py` (required where two modules share a name, e.g. data/coco.py and benchmark/coco.py)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dynamic_atss"
TESTS = ROOT / "tests"

# Modules with no test file of their own, and why.
COVERED_ELSEWHERE = {
    "dynamic_atss/__main__.py": "the `dynamic-atss` dispatch: tests/test_main.py",
    "dynamic_atss/_version.py": "one version string, no behaviour",
}


def missing_test_files(package: Path = PACKAGE, tests: Path = TESTS) -> list[str]:
    """The modules (paths relative to the repository) with no test file; a shared module name needs one
    `test_<sub>_<module>.py` per module, except for at most one that keeps `test_<module>.py`."""
    by_name: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        if path.name != "__init__.py":
            by_name[path.stem].append(path)
    missing = []
    for name, paths in by_name.items():
        without_own = [p for p in paths if not (tests / f"test_{p.parent.name}_{name}.py").is_file()]
        plain = (tests / f"test_{name}.py").is_file()
        for p in without_own[1:] if plain else without_own:
            missing.append(p.relative_to(package.parent).as_posix())
    return missing


def test_every_module_has_its_test_file():
    missing = [m for m in missing_test_files() if m not in COVERED_ELSEWHERE]
    assert not missing, f"no tests/test_<module>.py (or test_<sub>_<module>.py) for {missing}"


def test_the_allow_list_names_real_modules_that_have_no_file():
    missing = set(missing_test_files())
    assert set(COVERED_ELSEWHERE) <= missing, sorted(set(COVERED_ELSEWHERE) - missing)
    assert (TESTS / "test_main.py").is_file()


def test_a_shared_module_name_needs_one_file_per_module(tmp_path):
    package, tests = tmp_path / "pkg", tmp_path / "tests"
    for path in ("data/coco.py", "benchmark/coco.py", "solo.py"):
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text("")
    tests.mkdir()
    assert missing_test_files(package, tests) == ["pkg/benchmark/coco.py", "pkg/data/coco.py", "pkg/solo.py"]
    (tests / "test_coco.py").write_text("")
    (tests / "test_solo.py").write_text("")
    assert missing_test_files(package, tests) == ["pkg/data/coco.py"]  # test_coco.py serves one of the two
    (tests / "test_data_coco.py").write_text("")
    assert missing_test_files(package, tests) == []
