"""The classification side of the one config system: presets, --set overrides and one-line errors."""

import pytest

from qmed.config import (
    ClassifyConfig,
    DDPMConfig,
    PQCConfig,
    SimCLRConfig,
    available_classify_presets,
    resolve_classify_config,
)
from qmed.errors import QmedInputError


def test_cpu_preset_is_the_documented_defaults():
    assert "cpu" in available_classify_presets()
    assert resolve_classify_config("cpu") == ClassifyConfig()


def test_set_overrides_fields_and_keeps_the_rest():
    cfg = resolve_classify_config("cpu", ["dropout=0.3", "vflip=false", "positive=1"])
    assert cfg.dropout == 0.3 and cfg.vflip is False and cfg.positive == "1"
    assert cfg.model == ClassifyConfig().model


@pytest.mark.parametrize("over, needle", [(["no_such_field=1"], "no_such_field"), (["dropout=lots"], "dropout")])
def test_bad_override_is_one_line(over, needle):
    with pytest.raises(QmedInputError) as err:
        resolve_classify_config("cpu", over)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(QmedInputError, match="cpu"):
        resolve_classify_config("nope")


def test_quantum_settings_have_one_shape_with_the_old_names_accepted():
    assert PQCConfig.from_dict({"n_qubits": 3, "n_layers": 2}) == PQCConfig.from_dict({"qubits": 3, "layers": 2})
    with pytest.raises(QmedInputError, match="qubits"):
        PQCConfig.from_dict({"qubits": 40})


def test_every_verb_config_refuses_unknown_keys():
    for cls in (ClassifyConfig, SimCLRConfig, DDPMConfig, PQCConfig):
        with pytest.raises(QmedInputError):
            cls.from_dict({"surely_not_a_field": 1})
