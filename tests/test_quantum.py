"""The quantum feature layer (SPEC Q1): shapes, gradients, and the circuit against closed forms."""

import math

import pytest
import torch

pytest.importorskip("pennylane")

from qmed.config import PQCConfig  # noqa: E402
from qmed.errors import QmedInputError  # noqa: E402
from qmed.models.quantum import PQCLayer, QuantumCircuit  # noqa: E402


@pytest.mark.parametrize("entangler", ["strong", "basic"])
def test_output_shapes(entangler):
    torch.manual_seed(0)
    layer = PQCLayer(16, n_qubits=3, n_layers=2, entangler=entangler)
    h = torch.randn(5, 16)
    assert layer(h).shape == (5, 16)
    assert layer.quantum_features(h).shape == (5, 3)
    # any leading dims (a U-Net bottleneck passes (B, H*W, C))
    assert layer(torch.randn(2, 7, 16)).shape == (2, 7, 16)
    q = layer.quantum_features(h)
    assert q.abs().max() <= 1.0 + 1e-6


def test_weight_shapes_follow_entangler():
    assert QuantumCircuit(3, 2, "strong").weights.shape == (2, 3, 3)
    assert QuantumCircuit(3, 2, "basic").weights.shape == (2, 3)


def test_gradients_reach_circuit_weights_and_alpha():
    torch.manual_seed(0)
    layer = PQCLayer(8, n_qubits=4, n_layers=2, alpha_init=0.01)
    h = torch.randn(6, 8, requires_grad=True)
    layer(h).pow(2).sum().backward()
    for name, p in [
        ("circuit", layer.circuit.weights),
        ("alpha", layer.alpha),
        ("compress", layer.compress.weight),
        ("expand", layer.expand.weight),
    ]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_alpha_zero_is_identity():
    layer = PQCLayer(8, n_qubits=2, n_layers=1, alpha_init=0.0)
    h = torch.randn(3, 8)
    assert torch.allclose(layer(h), h)


@pytest.mark.parametrize("rotation", ["Y", "X"])
@pytest.mark.parametrize("entangler", ["strong", "basic"])
def test_one_qubit_matches_cos_theta(rotation, entangler):
    """R(θ)|0> then identity variational layer: <Z> = cos θ for RX and RY."""
    circ = QuantumCircuit(1, 1, entangler, rotation)
    with torch.no_grad():
        circ.weights.zero_()  # Rot(0,0,0) / RX(0) = identity; one wire has no entangling gates
    theta = torch.linspace(-math.pi, math.pi, 9).unsqueeze(1)
    z = circ(theta)
    assert z.shape == (9, 1)
    assert torch.allclose(z, torch.cos(theta), atol=1e-5)


def test_one_qubit_with_variational_rotation():
    """RY(θ) then RX(φ): <Z> = cos θ · cos φ (basic entangler on one wire is a single RX)."""
    circ = QuantumCircuit(1, 1, "basic", "Y")
    phi = 0.7
    with torch.no_grad():
        circ.weights.fill_(phi)
    theta = torch.tensor([[0.0], [0.4], [1.3], [-2.0]])
    assert torch.allclose(circ(theta), torch.cos(theta) * math.cos(phi), atol=1e-5)


def test_pqclayer_angles_are_bounded_and_encoded():
    """Through the whole layer: q = cos(π·tanh(w·x + b)) for one qubit with an identity circuit."""
    layer = PQCLayer(1, n_qubits=1, n_layers=1, entangler="basic", alpha_init=1.0)
    with torch.no_grad():
        layer.circuit.weights.zero_()
        layer.compress.weight.fill_(2.0)
        layer.compress.bias.fill_(0.1)
    x = torch.tensor([[-3.0], [-0.2], [0.0], [0.5], [10.0]])
    ang = layer.angles(x)
    assert ang.abs().max() <= math.pi + 1e-6  # tanh saturates to ±1 in float32
    assert torch.allclose(layer.quantum_features(x), torch.cos(math.pi * torch.tanh(2 * x + 0.1)), atol=1e-5)


def test_bad_settings_are_input_errors():
    with pytest.raises(QmedInputError):
        PQCConfig.from_dict({"entangler": "weird"})
    with pytest.raises(QmedInputError):
        PQCConfig.from_dict({"qubits": 0})
    with pytest.raises(QmedInputError):
        PQCConfig.from_dict({"nonsense": 1})
    with pytest.raises(QmedInputError, match="PennyLane device"):
        QuantumCircuit(2, 1, device="no.such.device")


def test_classifier_with_pqc_trains_circuit():
    from qmed.models.classifier import build_classifier

    torch.manual_seed(0)
    m = build_classifier("mobilenet_v2", 2, None, {"qubits": 3, "layers": 1})
    x = torch.rand(4, 1, 32, 32)
    out = m(x)
    assert out.shape == (4, 2)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 0, 1])).backward()
    assert m.pqc.circuit.weights.grad.abs().sum() > 0
    assert m.pqc.alpha.grad is not None
