"""The model card: written once by every run kind, read (and checked) by one reader."""

from __future__ import annotations

import json

import pytest

from transferlab.card import CARD_VERSION, ModelCard
from transferlab.errors import TransferlabError

# A probe card as transferlab 0.1.0 wrote it before cards had a version.
V1_PROBE = {
    "kind": "probe", "classes": ["a", "b"], "backbone": "test_resnet", "weights_source": "random",
    "weights_id": "abc", "resolution": 64, "layers": ["stage-2", "head"], "pool": "avg", "precision": "bf16",
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
}


def test_a_version_1_card_loads_with_the_defaults_of_today():
    card = ModelCard.from_dict(dict(V1_PROBE), "model.json")
    assert card.version == CARD_VERSION and card.inference_precision == "fp32"
    assert card.layers == ["stage-2", "head"] and card.mean == (0.485, 0.456, 0.406)


def test_a_card_round_trips_and_keeps_only_its_own_kind(tmp_path):
    card = ModelCard.from_dict(dict(V1_PROBE), "model.json")
    card.write(tmp_path)
    written = json.loads((tmp_path / "model.json").read_text())
    assert "head" not in written and "tta" not in written and written["version"] == CARD_VERSION
    assert ModelCard.from_dict(written, "model.json") == card


def test_a_card_from_a_newer_transferlab_says_to_upgrade():
    with pytest.raises(TransferlabError, match="upgrade transferlab"):
        ModelCard.from_dict({**V1_PROBE, "version": CARD_VERSION + 1}, "model.json")


@pytest.mark.parametrize("change, field", [
    ({"classes": ["a", "a"]}, "classes"), ({"resolution": 99999}, "resolution"), ({"mean": [1, 2]}, "mean"),
    ({"tta": "yes"}, "tta"), ({"layers": []}, "layers"), ({"inference_precision": "fp64"}, "inference_precision"),
])
def test_a_bad_field_is_named_in_one_line(change, field):
    with pytest.raises(TransferlabError, match=f"field '{field}'") as error:
        ModelCard.from_dict({**V1_PROBE, **change}, "model.json")
    assert "\n" not in str(error.value)
