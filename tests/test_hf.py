"""Tests of dynamic_atss.data.hf."""

from __future__ import annotations

import time
import warnings

import PIL.Image
import pytest
import torch

from dynamic_atss.data import DegenerateBoxWarning, HFDetection, SyntheticShapes

from helpers_data import SMALL, _check_sample, _plain


# ------------------------------------------------------------------------------------------------
# Hugging Face datasets
# ------------------------------------------------------------------------------------------------


def _hf_rows(syn, list_of_dicts=False):
    rows = {"image": [], "image_id": [], "objects": []}
    for i in range(len(syn)):
        arr, objects = syn.render(i)
        rows["image"].append(PIL.Image.fromarray(arr))
        rows["image_id"].append(1000 + i)
        bboxes = [[o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]] for o in objects]
        cats = [o.label for o in objects]
        if list_of_dicts:
            rows["objects"].append([{"bbox": b, "category": c} for b, c in zip(bboxes, cats)])
        else:
            rows["objects"].append({"bbox": bboxes, "category": cats})
    return rows


def _hf_features(names, list_of_dicts=False, class_label=True):
    import datasets

    cat = datasets.ClassLabel(names=list(names)) if class_label else datasets.Value("int64")
    box = datasets.List(datasets.Value("float32"), length=4)
    objects = (
        datasets.List({"bbox": box, "category": cat})
        if list_of_dicts
        else {"bbox": datasets.List(box), "category": datasets.List(cat)}
    )
    return datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("int64"), "objects": objects})


def test_hf_from_memory_disk_and_parquet_match_the_generator(tmp_path):
    import datasets

    syn = SyntheticShapes(4, **SMALL)
    ds = datasets.Dataset.from_dict(_hf_rows(syn), features=_hf_features(syn.class_names))
    ds.save_to_disk(str(tmp_path / "disk"))
    datasets.DatasetDict(train=ds, validation=ds.select([0, 1])).save_to_disk(str(tmp_path / "dict"))
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    cache = {"cache_dir": str(tmp_path / "cache")}
    sources = {
        "memory": HFDetection(ds),
        "disk": HFDetection(str(tmp_path / "disk")),
        "dict": HFDetection(tmp_path / "dict", split="train"),
        "parquet_dir": HFDetection(str(tmp_path / "pq"), load_kwargs=cache),
        "parquet_file": HFDetection(str(tmp_path / "pq" / "train.parquet"), load_kwargs=cache),
    }
    for name, hf in sources.items():
        assert len(hf) == 4, name
        assert hf.class_names == syn.class_names and hf.label_to_cat_id == list(range(6)), name
        assert hf.image_ids == [1000, 1001, 1002, 1003], name
        for i in range(4):
            (ia, ta), (ib, tb) = syn[i], hf[i]
            _check_sample(ib, tb, hf.num_classes)
            assert torch.equal(ia, ib), name
            assert torch.equal(_plain(ta["boxes"]), _plain(tb["boxes"])), name
            assert torch.equal(ta["labels"], tb["labels"]) and tb["image_id"] == 1000 + i, name
    assert len(HFDetection(str(tmp_path / "dict"), split="validation")) == 2
    with pytest.raises(KeyError, match=r"'test'.*available splits.*train"):
        HFDetection(datasets.DatasetDict(train=ds), split="test")
    gt = sources["memory"].to_coco_dict()
    assert len(gt["images"]) == 4 and gt["images"][0]["width"] == 128
    _, objects = syn.render(0)
    assert [a["bbox"] for a in gt["annotations"] if a["image_id"] == 1000] == [
        [o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]] for o in objects
    ]


def test_hf_list_of_dicts_xyxy_and_policy():
    import datasets

    syn = SyntheticShapes(2, **SMALL)
    rows = _hf_rows(syn, list_of_dicts=True)
    # row 1 gets a box partly outside (clipped), a zero-height box and one outside the 96x128 image
    rows["objects"][1] += [
        {"bbox": [120, 90, 20, 20], "category": 2},
        {"bbox": [10, 10, 5, 0], "category": 2},
        {"bbox": [10, 200, 5, 5], "category": 2},
    ]
    del rows["image_id"]
    feats = _hf_features(syn.class_names, list_of_dicts=True)
    del feats["image_id"]
    ds = datasets.Dataset.from_dict(rows, features=feats)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf = HFDetection(ds)
        _, target = hf[1]
    msgs = [str(w.message) for w in caught if issubclass(w.category, DegenerateBoxWarning)]
    assert len(msgs) == 2 and "row 1" in msgs[0] and "dropped 1 of" in msgs[0]  # zero-height at init
    assert "row 1" in msgs[1] and "outside" in msgs[1]  # outside: known once the image is decoded
    n = len(syn.render(1)[1])
    assert len(target["labels"]) == n + 1
    assert _plain(target["boxes"])[-1].tolist() == [120, 90, 128, 96]
    assert hf.image_ids == [0, 1]  # row index without an image_id column

    # xyxy input
    xyxy = {"image": rows["image"][:1], "objects": [[{"bbox": [2, 3, 40, 50], "category": 1}]]}
    hf = HFDetection(datasets.Dataset.from_dict(xyxy, features=feats), box_format="xyxy")
    assert _plain(hf[0][1]["boxes"]).tolist() == [[2, 3, 40, 50]]


def test_hf_without_classlabel_and_bad_rows():
    import datasets

    syn = SyntheticShapes(3, **SMALL)
    feats = _hf_features(syn.class_names, class_label=False)
    rows = _hf_rows(syn)
    ds = datasets.Dataset.from_dict(rows, features=feats)
    with pytest.warns(UserWarning, match="not a ClassLabel"):
        hf = HFDetection(ds)
    top = max(max(o["category"]) for o in rows["objects"])
    assert hf.class_names == [f"class_{i}" for i in range(top + 1)]
    assert HFDetection(ds, class_names=syn.class_names).class_names == syn.class_names

    bad = _hf_rows(syn)
    bad["objects"][2]["category"][0] = 17
    with pytest.raises(ValueError, match=r"row 2: category 17"):
        HFDetection(datasets.Dataset.from_dict(bad, features=feats), class_names=syn.class_names)
    mism = _hf_rows(syn)
    mism["objects"][1]["category"] = mism["objects"][1]["category"][:-1]
    with pytest.raises(ValueError, match=r"row 1: \d+ boxes but \d+ categories"):
        HFDetection(datasets.Dataset.from_dict(mism, features=feats), class_names=syn.class_names)
    corrupt = _hf_rows(syn)
    corrupt["image"][1] = {"bytes": b"definitely not an image", "path": None}
    hf = HFDetection(datasets.Dataset.from_dict(corrupt, features=feats), class_names=syn.class_names)
    hf[0]
    with pytest.raises(ValueError, match=r"row 1: cannot decode"):
        hf[1]
    with pytest.raises(ValueError, match="missing column"):
        HFDetection(ds, objects_key="annotations")
    with pytest.raises(ValueError, match="box_format"):
        HFDetection(ds, box_format="cxcywh")


def test_an_unknown_hub_dataset_is_one_line_in_seconds(tmp_path, monkeypatch, capsys):
    """Issue 18, item 11: an unknown dataset name with the Hub unreachable was a ConnectionError traceback after
    ~30 s of retries. Now: exit 2, one line, in seconds; no network beyond loopback."""
    import socket

    import huggingface_hub

    from dynamic_atss.cli.train import main as train_main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.monotonic()
    assert train_main(["--config", "demo_cpu", "--data.kind", "hf", "--data.source", "nobody/no-such-dataset",
                       "--output_dir", str(tmp_path / "run")]) == 2
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err
    assert "data.source 'nobody/no-such-dataset' is not a local folder or file, and the Hub" in err
    assert "HF_DATASETS_OFFLINE=1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "train_config.json").exists()
