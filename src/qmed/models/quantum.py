"""The quantum feature layer (SPEC Q1; 2601.16608 Eq. 9-12, SDA-QEC's "quantum feature layer").

    h (N, F) --Linear--> u (N, Q) --bound--> θ = angle_scale·tanh(u) (N, Q)
      --AngleEmbedding(θ, rotation RY|RX) on Q qubits--> L variational entangling layers
      --<Z_i>, i = 1..Q--> q (N, Q) in [-1, 1] --Linear--> W_r·q (N, F)
    out = h + α·W_r·q            (α: learnable scalar, starts small: the layer begins as ~identity)

Angle bounding: a raw linear projection can send angles anywhere, and rotations are 2π-periodic,
so large pre-activations would alias. tanh squashes u into (-1, 1) and `angle_scale` (default π)
maps that onto (-π, π): one full period, monotone, and with a usable gradient near 0.

The circuit is a PennyLane QNode wrapped in ``qml.qnn.TorchLayer``. With ``default.qubit`` and
``diff_method="backprop"`` the simulator broadcasts over the batch (one statevector simulation of
shape (N, 2**Q), differentiated by torch autograd), so the cost per step is small for Q <= ~10.
Any other PennyLane device can be named (``device="lightning.qubit"``, a hardware plugin, ...);
then use a diff_method it supports (``"adjoint"``, ``"parameter-shift"``, ``"best"``).

`QuantumCircuit` is the bare circuit (angles in, expectations out) and `PQCLayer` the residual
block around it, configured by `qmed.config.PQCConfig` (the one model of the quantum settings:
the classifier's layer and HQ-UNet's bottleneck both use it). Both accept inputs with any leading
dimensions (..., F), so a U-Net bottleneck (issue 9) can pass (B, H·W, C) positions through the
same layer.
"""

from __future__ import annotations

import torch
from torch import nn

from qmed.config import PQCConfig
from qmed.errors import QmedInputError, require_extra


def _import_pennylane():
    return require_extra("pennylane", "quantum", "the quantum layer")


class QuantumCircuit(nn.Module):
    """Angles (..., Q) -> Pauli-Z expectations (..., Q) in [-1, 1].

    Circuit: AngleEmbedding(angles, rotation) then L entangling layers with trainable weights
    (``self.qlayer.weights``: shape (L, Q, 3) for "strong", (L, Q) for "basic")."""

    def __init__(
        self,
        n_qubits: int = 4,
        n_layers: int = 2,
        entangler: str = "strong",
        rotation: str = "Y",
        device: str = "default.qubit",
        diff_method: str = "backprop",
    ):
        super().__init__()
        qml = _import_pennylane()
        self.n_qubits, self.n_layers, self.entangler, self.rotation = (
            int(n_qubits),
            int(n_layers),
            entangler,
            rotation.upper(),
        )
        wires = list(range(self.n_qubits))
        try:
            dev = qml.device(device, wires=self.n_qubits)
        except Exception as exc:  # unknown plugin, missing credentials, ...
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QmedInputError(None, f"cannot open PennyLane device {device!r}: {msg}") from None
        Layers = qml.StronglyEntanglingLayers if entangler == "strong" else qml.BasicEntanglerLayers
        rotation_name = self.rotation

        @qml.qnode(dev, interface="torch", diff_method=diff_method)
        def circuit(inputs, weights):
            qml.AngleEmbedding(inputs, wires=wires, rotation=rotation_name)
            Layers(weights, wires=wires)
            return [qml.expval(qml.PauliZ(w)) for w in wires]

        shape = Layers.shape(n_layers=self.n_layers, n_wires=self.n_qubits)
        # Uniform in [0, 2π) is PennyLane's default init for both templates; kept.
        self.qlayer = qml.qnn.TorchLayer(circuit, {"weights": shape})
        self.device_name, self.diff_method = device, diff_method

    @property
    def weights(self) -> nn.Parameter:
        return self.qlayer.weights

    def forward(self, angles: torch.Tensor) -> torch.Tensor:
        lead = angles.shape[:-1]
        flat = angles.reshape(-1, self.n_qubits)
        q = self.qlayer(flat)
        return q.to(angles.dtype).reshape(*lead, self.n_qubits)


class PQCLayer(nn.Module):
    """Residual quantum feature layer: (..., F) -> (..., F), out = h + α·W_r·PQC(angle_scale·tanh(W_q·h)).

    With α = 0 the layer is exactly the identity; the default α = 0.01 starts it close to the
    identity while letting gradients reach the circuit from the first step."""

    def __init__(self, in_features: int, config: PQCConfig | dict | None = None, **overrides):
        """`config`: a PQCConfig (or its dict); `overrides`: single settings on top (e.g. n_qubits=3 or qubits=3)."""
        super().__init__()
        cfg = config if isinstance(config, PQCConfig) else PQCConfig.from_dict(config)
        cfg = cfg.updated(**overrides) if overrides else cfg
        self.config = cfg
        self.in_features = int(in_features)
        self.compress = nn.Linear(self.in_features, cfg.qubits)  # W_q
        self.circuit = QuantumCircuit(cfg.qubits, cfg.layers, cfg.entangler, cfg.rotation, cfg.device, cfg.diff_method)
        self.expand = nn.Linear(cfg.qubits, self.in_features)  # W_r
        self.alpha = nn.Parameter(torch.tensor(float(cfg.alpha_init)))
        self.angle_scale = float(cfg.angle_scale)

    def angles(self, h: torch.Tensor) -> torch.Tensor:
        """Bounded encoding angles θ = angle_scale·tanh(W_q h), in (-angle_scale, angle_scale)."""
        return self.angle_scale * torch.tanh(self.compress(h))

    def quantum_features(self, h: torch.Tensor) -> torch.Tensor:
        """q = <Z_i> after the circuit, shape (..., Q), values in [-1, 1]."""
        return self.circuit(self.angles(h))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.in_features:
            raise ValueError(f"PQCLayer expects (..., {self.in_features}) features, got {tuple(h.shape)}")
        return h + self.alpha * self.expand(self.quantum_features(h))

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"in_features={self.in_features}, qubits={c.qubits}, layers={c.layers}, entangler={c.entangler}, "
            f"rotation=R{c.rotation}, device={c.device}, diff_method={c.diff_method}"
        )
