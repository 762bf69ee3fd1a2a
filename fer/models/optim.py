"""Muon for a convolutional net's hidden layers and AdamW for the rest, as one torch optimiser, so that
Lightning's automatic optimisation and one learning-rate schedule drive both."""

from __future__ import annotations

import math

import torch

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
"""Muon's quintic iteration (Jordan et al. 2024, as torch.optim.Muon has them): steepest at zero, so five
steps take every singular value into roughly [0.7, 1.2]."""


def orthogonalise(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to `matrix`, approximately (U V^T of its SVD U S V^T), by
    Newton-Schulz iterations in bfloat16: torch.optim.Muon's computation, op for op."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.bfloat16()
    wide = matrix.size(0) <= matrix.size(1)
    x = x if wide else x.T
    x = x / x.norm().clamp(min=1e-7)  # every singular value <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


class MuonAdamW(torch.optim.AdamW):
    """AdamW, except for the parameter groups flagged `hidden_matrix` (EmotionClassifier.parameter_groups:
    the hidden conv and linear weights), which take Muon's step (Jordan et al. 2024): their Nesterov
    momentum, orthogonalised, so that every direction of a layer moves at one rate.

    A (out, in, kh, kw) kernel is orthogonalised as the (out, in*kh*kw) matrix that it applies (torch's
    own Muon takes 2-D weights only). The orthogonal update is scaled by 0.2 * sqrt(max(rows, columns))
    (Moonshot's "match_rms_adamw": an update of AdamW's RMS) times `muon_lr_scale`, so that both kinds of
    parameter share AdamW's learning rate, decoupled weight decay and schedule. The hidden weights'
    gradients are consumed by the step (set to None): that is how AdamW's own step leaves them alone.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, muon_lr_scale: float = 1.0,
                 ns_steps: int = 5, **adamw):
        super().__init__(params, lr=lr, **adamw)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum, self.muon_lr_scale, self.ns_steps = momentum, muon_lr_scale, ns_steps

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("hidden_matrix"):
                for param in group["params"]:
                    if param.grad is not None:
                        self._muon_step(param, group["lr"], group["weight_decay"])
                        param.grad = None
        super().step()
        return loss

    def _muon_step(self, param: torch.Tensor, lr: float, weight_decay: float) -> None:
        grad = param.grad.reshape(len(param), -1)
        state = self.state[param]
        if "momentum_buffer" not in state:  # a "step" as AdamW's states have: its load_state_dict reads one
            state["step"], state["momentum_buffer"] = torch.tensor(0.0), torch.zeros_like(grad)
        state["step"] += 1
        momentum = state["momentum_buffer"].lerp_(grad, 1 - self.momentum)
        update = orthogonalise(grad.lerp(momentum, self.momentum), self.ns_steps)  # Nesterov
        param.mul_(1 - lr * weight_decay)
        scale = self.muon_lr_scale * 0.2 * math.sqrt(max(grad.shape))
        param.add_(update.reshape(param.shape).to(param.dtype), alpha=-lr * scale)
