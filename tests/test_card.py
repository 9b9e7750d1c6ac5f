"""Tests of dynamic_atss.hub.card."""

from __future__ import annotations

import torch
from huggingface_hub import ModelCard

import dynamic_atss
from dynamic_atss.hub.card import generate_model_card
import dynamic_atss as da

from helpers_hub import METRICS, tiny_model


def test_card_of_a_hub_dataset_fine_tune_links_the_dataset_and_labels_the_split():
    config = dynamic_atss.ModelConfig(num_classes=1, class_names=["tree"])
    recipe = {"model": "r50", "init_from": "local-dir:/home/me/runs/base", "output_dir": "/home/me/out",
              "data": {"kind": "hf", "source": "org/tree-crowns", "name": "org/tree-crowns",
                       "train_images": "/home/me/x"}}
    card = generate_model_card(config, repo_id="org/trees", recipe=recipe,
                               metrics={"dataset": "org/tree-crowns", "split": "validation", "AP": 2.5})
    data = ModelCard(card).data.to_dict()
    assert data["datasets"] == ["org/tree-crowns"]
    results = data["model-index"][0]["results"][0]
    assert results["dataset"] == {"name": "org/tree-crowns", "type": "org/tree-crowns", "split": "validation"}
    assert "coco" not in card.lower() and "/home/me" not in card
    assert "1 class: tree" in card and "1 classes" not in card
    assert "https://huggingface.co/datasets/org/tree-crowns" in card and "split `validation`" in card
    assert "pypi.org" not in card  # no package index page: the package is not published there
    # COCO-trained metrics are still labelled COCO
    coco = generate_model_card(dynamic_atss.ModelConfig(), metrics={"dataset": "coco", "split": "val2017", "AP": 40.3})
    assert ModelCard(coco).data.to_dict()["datasets"] == ["coco"] and "COCO 2017" in coco


def test_card_links_the_repository_only_when_the_package_metadata_names_one(monkeypatch):
    import importlib.metadata  # noqa: PLC0415
    from email.message import Message  # noqa: PLC0415

    def metadata_with(urls: list[str]):
        message = Message()
        for url in urls:
            message["Project-URL"] = url
        return lambda name: message

    monkeypatch.setattr(importlib.metadata, "metadata", metadata_with(["Paper, https://arxiv.org/abs/2201.09396"]))
    card = generate_model_card(dynamic_atss.ModelConfig())
    assert "for the `dynamic-atss` library" in card
    monkeypatch.setattr(importlib.metadata, "metadata", metadata_with(["Repository, https://example.org/dynamic-atss"]))
    assert "[`dynamic-atss`](https://example.org/dynamic-atss)" in generate_model_card(dynamic_atss.ModelConfig())


def test_model_card_names_the_head_and_the_dcn_stages():
    from dynamic_atss.hub.card import generate_model_card

    with torch.device("meta"):
        model = da.create("gfl_x101_32x4d_dcn_c4")
    card = generate_model_card(model.config, head_description=model.head.describe())
    assert "GFL head" in card and "DCNv2 in stages 3, 4" in card and "quality branch" not in card


def test_model_card(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m", metrics=METRICS, repo_id="org/tiny-atss", tags=["tiny"])
    card = ModelCard.load(tmp_path / "m" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "dynamic-atss" and data["license"] == "apache-2.0"
    assert {"object-detection", "dynamic-atss", "tiny"} <= set(data["tags"])
    assert data["datasets"] == ["coco"]
    results = data["model-index"][0]["results"][0]
    assert results["task"]["type"] == "object-detection" and results["dataset"]["split"] == "val2017"
    assert {m["type"]: m["value"] for m in results["metrics"]} == {"AP": 40.3, "AP50": 57.9, "AP75": 44.1}
    assert 'dynamic_atss.create("hf-hub:org/tiny-atss")' in card.text
    assert "arXiv:2201.09396" in card.text and "Sharda, Ajay" in card.text and "Dynamic Label Assignment" in card.text
    # without metrics: no model-index, no datasets claimed
    tiny_model().save_pretrained(tmp_path / "n")
    data = ModelCard.load(tmp_path / "n" / "README.md").data.to_dict()
    assert "model-index" not in data and "datasets" not in data


def test_model_card_describes_the_head_family(tmp_path, tiny_kwargs):
    import dynamic_atss as da

    atss = da.create("r50", **tiny_kwargs)
    vfnet = da.create("dynamic_vfnet_r50", **{**tiny_kwargs, "head.num_convs": 2})
    atss.save_pretrained(tmp_path / "atss")
    vfnet.save_pretrained(tmp_path / "vfnet")
    atss_card = (tmp_path / "atss" / "README.md").read_text()
    vfnet_card = (tmp_path / "vfnet" / "README.md").read_text()
    assert "ATSS head, quality branch `iou`" in atss_card and "Dynamic ATSS](https" in atss_card
    assert "VFNet head" in vfnet_card and "ATSS head" not in vfnet_card
    assert "`vfnet` object detector with the [combined-IoU label assignment]" in vfnet_card
    assert "- vfnet" in vfnet_card  # Hub tag names the family
