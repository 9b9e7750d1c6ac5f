"""registry.py: the tables (model names, `name.tag` weights, converters) and the errors that say what exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import dynamic_atss
import dynamic_atss as da
from dynamic_atss import registry
from dynamic_atss.registry import available_converters
from dynamic_atss.detection.heads import FAMILIES
from dynamic_atss.registry import FamilyNotAvailableError, NoPretrainedWeightsError

from helpers_url import cache_files, without_family

TAG = "atss_r50.mmdet_coco_1x"
REAL_URL = ("https://download.openmmlab.com/mmdetection/v2.0/atss/atss_r50_fpn_1x_coco/"
            "atss_r50_fpn_1x_coco_20200209-985f7bd0.pth")
ALL_MODELS = da.list_models()


def test_aliases_wildcards_and_unknown_names():
    dcn_models = da.list_models("*dcn*")  # every family's DCN variants
    assert {n for n in ALL_MODELS if "dcn" in n} <= set(dcn_models) and all("dcn" in n for n in dcn_models)
    assert da.list_models("r101*") == ["dynamic_atss_r101", "dynamic_atss_r101_dcn"]
    with pytest.raises(ValueError, match=r"closest: .*r101_dcn"):
        da.create("r101_dnc")
    with pytest.raises(ValueError, match="no pretrained tag"):
        da.get_pretrained_cfg("r50.nonexistent")
    with pytest.raises(RuntimeError, match="no published weights"):
        da.create("r50.coco_1x")


def test_index_entries_are_honest():
    entries = json.loads(registry.INDEX_FILE.read_text())["weights"]
    mmdet = [e for e in entries if e.get("url")]
    assert {e["model"] + "." + e["tag"] for e in mmdet} >= {TAG, "atss_r101.mmdet_coco_1x"}
    for entry in mmdet:
        name = entry["url"].rsplit("/", 1)[1]
        assert entry["url"].startswith("https://download.openmmlab.com/mmdetection/v2.0/"), entry
        assert re.fullmatch(r"[0-9a-f]{8}", entry["hash_prefix"]) and name.endswith(f"-{entry['hash_prefix']}.pth")
        assert entry["metrics"]["source"] == "mmdetection" and entry["metrics"]["AP"] > 35
        assert not entry["model"].startswith("dynamic_atss"), "plain ATSS / GFL / VFNet weights are not Dynamic ATSS"
        assert entry["converter"] == f"mmdet_{entry['family']}" and entry["description"]
    assert registry.get_pretrained_cfg(TAG).url == REAL_URL
    assert registry.get_pretrained_cfg("atss_r50").tag == "mmdet_coco_1x"
    loadable = {f"{e['model']}.{e['tag']}" for e in mmdet if f"mmdet_{e['family']}" in available_converters()}
    assert dynamic_atss.list_models(pretrained=True) == sorted(loadable)  # the families this version has
    assert {"atss_r101.mmdet_coco_1x", "atss_r50.mmdet_coco_1x"} <= loadable


def test_every_family_variant_is_registered_once_with_its_family():
    variants = [(family.kind, variant) for family in FAMILIES.values() for variant in family.variants]
    assert sorted(v.name for _, v in variants) == da.list_models()
    for kind, variant in variants:
        entry = registry.model_entry(variant.name)
        assert (entry.family, entry.trunk, entry.dcn) == (kind, variant.trunk, variant.dcn)
        assert entry.config().head.kind == kind


def test_a_name_registered_twice_raises():
    entry = registry.model_entry("r50")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_model(entry)
    from dynamic_atss.detection.heads import register_family

    with pytest.raises(ValueError, match="registered twice"):
        register_family(FAMILIES["atss"])
    from dynamic_atss.convert import register_mmdet_head

    with pytest.raises(ValueError, match="registered twice"):
        register_mmdet_head("bbox_head.atss_centerness.weight", "atss")(lambda remaining, take: {})


def test_pretrained_cfg_has_no_dead_fields():
    fields = set(registry.PretrainedCfg.__dataclass_fields__)
    assert not {"dataset", "notes"} & fields
    entries = json.loads(registry.INDEX_FILE.read_text())["weights"]
    assert all(set(entry) <= fields for entry in entries)


def test_nearest_weights_rank_by_the_entry_not_the_name(monkeypatch):
    """The family and backbone of a name come from its registry entry (no family-name regexes)."""
    nearest = registry._nearest_weights("dynamic_vfnet_r101_dcn")
    assert nearest[0].family == "vfnet"
    nearest = registry._nearest_weights("dynamic_gflv2_x101_32x8d")
    assert nearest[0].family == "gfl"


def test_the_registry_imports_nothing_of_the_package():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(registry.__file__).read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert sorted(node.module for node in imports) == ["config", "errors"]  # config under TYPE_CHECKING only


def test_family_not_available_yet_is_a_clear_error(torch_cache, monkeypatch):
    without_family(monkeypatch, "gfl")
    for name in ("gfl_r50.mmdet_coco_1x", "gfl_r101.mmdet_coco_2x_ms"):
        with pytest.raises(FamilyNotAvailableError, match=r"head family.*not available in this version.*atss_r50"):
            dynamic_atss.create(name, pretrained=True)
    assert cache_files(torch_cache) == []


def test_suggested_weights_for_an_atss_model_are_atss_weights_first():
    with pytest.raises(NoPretrainedWeightsError) as caught:
        dynamic_atss.create("dynamic_atss_r101_dcn", pretrained=True)
    suggested = re.findall(r"create\('([^']+)'", str(caught.value))
    assert suggested[0].startswith("atss_"), suggested
    # the list holds VFNet and GFL weights too: not all "plain ATSS" (test_the_advice_names_what_the_listed_...)
    assert "plain detectors (anchor IoUs only)" in str(caught.value)


def test_suggested_weights_follow_the_head_family():
    for model, family in (("dynamic_vfnet_r101", "vfnet_"), ("dynamic_gflv2_r50", "gfl_")):
        with pytest.raises(NoPretrainedWeightsError) as caught:
            dynamic_atss.create(model, pretrained=True)
        suggested = re.findall(r"create\('([^']+)'", str(caught.value))
        assert suggested[0].startswith(family), (model, suggested)
        assert "plain ATSS" not in str(caught.value) and "not their combined-IoU versions" in str(caught.value)


# ---------------------------------------------------------------------------------------------- issue 23, item 7
def test_the_registry_errors_are_user_input_errors_with_their_builtin_base():
    from dynamic_atss.errors import UserInputError
    from dynamic_atss.registry import UnknownTagError

    assert issubclass(FamilyNotAvailableError, UserInputError)
    assert issubclass(FamilyNotAvailableError, NotImplementedError)
    assert issubclass(UnknownTagError, UserInputError) and issubclass(UnknownTagError, ValueError)


def test_an_unknown_tag_is_one_line_naming_the_tags_of_that_model():
    """It was a ValueError of 9 lines advising "Those are plain ATSS" about a list with GFL and VFNet weights."""
    from dynamic_atss.errors import UserInputError

    with pytest.raises(UserInputError) as caught:
        da.create("gfl_r50.nope")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and "\n" not in message
    assert "'gfl_r50.nope'" in message and "['gfl_r50.mmdet_coco_1x', 'gfl_r50.mmdet_coco_2x_ms']" in message


def test_the_advice_names_what_the_listed_weights_are_and_the_combined_iou_model():
    with pytest.raises(NoPretrainedWeightsError) as caught:
        da.create("dynamic_atss_r101_dcn", pretrained=True)  # its nearest weights hold ATSS, VFNet and GFL ones
    message = str(caught.value)
    listed = re.findall(r"create\('([^'.]+)\.", message)
    assert {name.split("_")[0] for name in listed} > {"atss"}, listed
    assert "Those are plain ATSS" not in message and "plain detectors (anchor IoUs only)" in message
    assert "--update-index dynamic_atss_r101_dcn.TAG" in message
    assert "--update-index dynamic_atss_r50.TAG" in registry.what_is_available("atss_r50")  # not atss_r50.TAG


def test_closest_names_are_full_registered_names_once_each():
    """`create('r51')` suggested ['r50', 'r101', '_r50', '_r50'] (names cut by the prefix length, repeated)."""
    with pytest.raises(registry.UnknownModelError) as caught:
        da.create("r51")
    close = re.search(r"closest: (\[.*?\])", str(caught.value)).group(1)
    names = json.loads(close.replace("'", '"'))
    assert names and len(names) == len(set(names))
    assert all(name in da.list_models() for name in names), names
    assert "dynamic_atss_r50" in names
