"""Optional parts (quantum, diffusion, peers) say which `pip install` brings them, in one line."""

import sys

import pytest

from qmed.errors import QmedInputError, require_extra


def test_present_extra_is_imported():
    assert require_extra("json", "none", "a test").dumps([]) == "[]"


@pytest.mark.parametrize("module, extra", [("pennylane", "quantum"), ("diffusers", "diffusion")])
def test_missing_extra_names_the_install(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import then raises ImportError, as when absent
    with pytest.raises(QmedInputError) as err:
        require_extra(module, extra, "this verb")
    msg = str(err.value)
    assert "\n" not in msg and f"pip install 'qmed[{extra}]'" in msg and module in msg


def test_quantum_layer_without_pennylane_is_one_line(monkeypatch):
    from qmed.models import quantum

    monkeypatch.setitem(sys.modules, "pennylane", None)
    with pytest.raises(QmedInputError, match=r"pip install 'qmed\[quantum\]'"):
        quantum.QuantumCircuit(n_qubits=2, n_layers=1)
