"""Tests of dynamic_atss.locations (split out of the registry: names there, locations here)."""

from __future__ import annotations

import pytest

from dynamic_atss import locations
from dynamic_atss.errors import UserInputError


def test_locations_are_parsed_in_one_place(tmp_path):
    assert locations.parse_location("hf-hub:org/name@v1") == ("hub", "org/name", "v1")
    assert locations.parse_location(f"local-dir:{tmp_path}") == ("dir", str(tmp_path), None)
    assert locations.parse_location(str(tmp_path)) == ("dir", str(tmp_path), None)
    assert locations.parse_location("r50") is None
    with pytest.raises(UserInputError, match="hf-hub:org/name") as caught:
        locations.parse_location("hf-hub:not a repo")
    assert isinstance(caught.value, ValueError)
    from dynamic_atss.hub import download

    assert download.is_model_folder is locations.is_model_folder


def test_repo_ids_are_not_paths():
    assert locations.is_repo_id("org/name") and not locations.is_repo_id("./org/name")
    assert not locations.is_repo_id("/abs/path") and not locations.is_repo_id("name")
