"""Names the CLI lists without importing the heavy libraries match what the libraries build."""

from __future__ import annotations

import pytest

from transferlab.classifiers import heads
from transferlab.classifiers.names import CLASSIFIERS
from transferlab.errors import TransferlabError
from transferlab.finetune.recipe import STAGE_PRESETS, preset_stages


def test_classifier_names_are_the_heads_that_build():
    assert set(CLASSIFIERS) == set(heads._ESTIMATORS)


@pytest.mark.parametrize("written", ["head-only", "fine_tune", "three-step", "from-block:1", "gradual", "gradual:2"])
def test_every_stage_preset_resolves(written):
    stages = preset_stages(written, ["stem", "blocks.0", "blocks.1", "neck"])
    assert stages and stages[0].train == "head"


def test_stage_preset_names_are_listed_in_the_error():
    with pytest.raises(TransferlabError) as error:
        preset_stages("three_step", ["stem", "neck"])
    assert all(name in str(error.value) for name in STAGE_PRESETS)
