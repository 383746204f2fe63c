"""ASR: attention fed by a learnable ψ inside the block's last BN (its fold: :func:`stripe.gates.reparameterize`)."""
from __future__ import annotations

import torch
from torch import nn


class ASRNorm(nn.Module):
    """BN followed by multiplication with v = attn(ψ): y = norm(x) ⊙ v.

    ψ is a learnable [1, C, s, s] tensor, the same for every input, so v [1, C] is a constant at
    inference and folds into the norm's γ and β (:func:`stripe.gates.reparameterize`).

    ψ is a single input, so a ReLU unit that is dead for it gets no gradient and stays dead; in a module
    whose MLP has no biases (CBAM, SPA) a tap whose hidden units all die is frozen at sigmoid(0) = 0.5.
    """

    def __init__(self, norm: nn.BatchNorm2d, attn: nn.Module, psi_size: int = 1, psi_init: float = 0.1) -> None:
        super().__init__()
        channels = norm.num_features
        self.norm = norm
        self.attn = attn
        self.psi = nn.Parameter(torch.full((1, channels, psi_size, psi_size), float(psi_init)))

    def vector(self) -> torch.Tensor:
        """The attention vector v = attn(ψ), [1, C]."""
        return self.attn.gate(self.psi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.vector()[:, :, None, None]
