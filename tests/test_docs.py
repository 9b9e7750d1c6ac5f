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


# ------------------------------------------------------------------------------------- issue 25: docs that are true
README = (ROOT / "README.md").read_text()
WEIGHT_NAME = __import__("re").compile(r"\b((?:[a-z]+_)*r\d+\w*|x101\w*)\.((?:mmdet_)?coco_\w+)")


def _package_texts(folders: tuple[str, ...] = ("",)) -> str:
    return "\n".join(path.read_text() for folder in folders for path in (ROOT / "dynamic_atss" / folder).rglob("*.py"))


HELP_TEXTS = ("cli", "benchmark")  # the commands' help and examples


def test_examples_name_only_weights_that_exist():
    """The README and the help texts named `r101_dcn.coco_2x_ms` / `r50.coco_1x`: index entries without weights."""
    from dynamic_atss.registry import get_pretrained_cfg

    named = {m.group(0) for text in (README, _package_texts(HELP_TEXTS)) for m in WEIGHT_NAME.finditer(text)}
    assert "atss_r50.mmdet_coco_1x" in named
    without = sorted(name for name in named if not ((cfg := get_pretrained_cfg(name)).url or cfg.hf_hub_id))
    allowed = {"dynamic_atss_r50.coco_1x"}  # named only as the index entry that `push --update_index` fills
    assert set(without) <= allowed, without


def test_the_transformers_model_type_is_spelled_as_the_code_spells_it():
    from dynamic_atss.hub.serialization import MODEL_TYPE

    assert MODEL_TYPE == "dynamic_atss" and "`dynamic_atss` model type" in README
    assert "`dynamic-atss` model type" not in README


def test_one_spelling_of_the_training_entry_point_and_no_history_on_the_first_screen():
    texts = README + (ROOT / "hub" / "README.md").read_text() + _package_texts()
    assert "python -m dynamic_atss.train" not in texts and "dynamic_atss.train " not in texts
    assert README.count("launch train.py") == 1  # the one sentence about a source checkout
    first_screen = "\n".join(README.splitlines()[:45])
    assert "Winograd" not in first_screen and "Winograd" in (ROOT / "CHANGELOG.md").read_text()
    assert "this machine" not in README and "AMD EPYC" in first_screen  # measurements say where they were taken


def test_hub_readme_matches_the_code():
    hub_readme = (ROOT / "hub" / "README.md").read_text()
    assert "download_url_to_file`:" not in hub_readme and "four files" in hub_readme
    assert "One known difference remains" not in hub_readme
    for old in ("dynamic_atss/hub/cli.py", "dynamic_atss/convert/cli.py", "--update-index", "--repo org"):
        assert old not in hub_readme, old
