"""Bernoulli–Bernoulli RBM trained by contrastive divergence (CD-k) or persistent CD (PCD).

Energy E(v, h) = −b·v − c·h − vᵀWh over binary visible v (the pixels, binarized) and hidden
h. Training follows the CD-k / PCD gradient as the autograd gradient of
mean F(v_data) − mean F(v_model) (F the free energy, v_model the end of the Gibbs chains,
held fixed); sampling runs Gibbs chains; the test log-likelihood comes from annealed
importance sampling of log Z from a base-rate model (Salakhutdinov & Murray 2008).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dgm.errors import DgmError
from dgm.models.base import (
    MAX_UNITS,
    GenerativeModel,
    ImageShape,
    ModelConfigBase,
    bernoulli,
    unwrap,
)


class RBMConfig(ModelConfigBase):
    family: Literal["rbm"] = "rbm"
    hidden: int = Field(500, gt=0, le=MAX_UNITS)
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.5, ge=0, lt=1)
    weight_decay: float = Field(2e-4, ge=0, le=1)
    cd_k: int = Field(1, gt=0, le=1000, description="Gibbs steps per update (CD-k / PCD-k)")
    persistent: bool = Field(False, description="PCD: chains continue across updates")
    persistent_chains: int = Field(100, gt=0, le=100_000)
    gibbs_steps: int = Field(1000, gt=0, le=1_000_000,
                             description="Gibbs steps per generated sample")
    ais_betas: int = Field(10_000, gt=1, le=10_000_000,
                           description="intermediate distributions of AIS")


class BernoulliRBM(nn.Module):
    """Weights W (V, H), visible bias b (V), hidden bias c (H); ``forward`` = free energy."""

    def __init__(self, visible: int, hidden: int):
        super().__init__()
        self.W = nn.Parameter(torch.randn(visible, hidden) * 0.01)
        self.b = nn.Parameter(torch.zeros(visible))
        self.c = nn.Parameter(torch.zeros(hidden))

    def forward(self, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Free energy F(v) = −b·v − Σ_j softplus(c_j + (vW)_j), one value per row; a 0/1
        hidden ``mask`` (per row) drops hidden units (dropout RBM)."""
        hidden = F.softplus(v @ self.W + self.c)
        if mask is not None:
            hidden = hidden * mask
        return -(v @ self.b) - hidden.sum(-1)

    def hidden_probs(self, v: torch.Tensor, beta: float = 1.0,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
        probs = torch.sigmoid(beta * (v @ self.W + self.c))
        return probs if mask is None else probs * mask

    def visible_logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.W.t() + self.b

    def gibbs(self, v: torch.Tensor, steps: int, generator: torch.Generator | None = None,
              mask: torch.Tensor | None = None):
        """``steps`` rounds of v → h → v (hidden units off where ``mask`` is 0); returns
        (last binary v, its visible probabilities)."""
        probs = v
        for _ in range(steps):
            h = bernoulli(self.hidden_probs(v, mask=mask), generator)
            probs = torch.sigmoid(self.visible_logits(h))
            v = bernoulli(probs, generator)
        return v, probs


@torch.no_grad()
def exact_log_partition(rbm: BernoulliRBM) -> float:
    """log Z by enumerating the 2^H hidden states (H ≤ 24):
    log Σ_h exp(c·h) Π_i (1 + exp(b_i + W_i·h))."""
    hidden = rbm.c.numel()
    if hidden > 24:
        raise ValueError(f"exact log Z enumerates 2^H states; H = {hidden} is too many")
    states = ((torch.arange(2 ** hidden)[:, None] >> torch.arange(hidden)) & 1).to(rbm.W.dtype)
    terms = states @ rbm.c + F.softplus(states @ rbm.W.t() + rbm.b).sum(-1)
    return float(torch.logsumexp(terms.double(), 0))


@torch.no_grad()
def ais_log_partition(rbm: BernoulliRBM, base_bias: torch.Tensor, chains: int, betas: int,
                      generator: torch.Generator | None = None) -> tuple[float, float]:
    """AIS estimate of log Z (and its ±3 std bound width) from the base-rate model.

    The base model has the visible biases ``base_bias`` and no coupling (log Z_0 =
    Σ softplus(base_bias) + H log 2); intermediate distributions are
    p_β(v) ∝ exp((1−β) a·v + β b·v) Π_j (1 + exp(β (c_j + (vW)_j))).
    """
    schedule = torch.linspace(0.0, 1.0, betas, dtype=torch.float64).tolist()
    hidden = rbm.c.numel()

    def log_p(v: torch.Tensor, beta: float) -> torch.Tensor:
        return ((1 - beta) * (v @ base_bias) + beta * (v @ rbm.b)
                + F.softplus(beta * (v @ rbm.W + rbm.c)).sum(-1))

    v = bernoulli(torch.sigmoid(base_bias).expand(chains, -1).contiguous(), generator)
    log_w = torch.zeros(chains, dtype=torch.float64, device=v.device)
    for previous, beta in zip(schedule[:-1], schedule[1:], strict=True):
        log_w += (log_p(v, beta) - log_p(v, previous)).double()
        h = bernoulli(rbm.hidden_probs(v, beta), generator)
        v = bernoulli(torch.sigmoid((1 - beta) * base_bias + beta * rbm.visible_logits(h)),
                      generator)
    log_z0 = float(F.softplus(base_bias).sum()) + hidden * math.log(2)
    log_mean_w = float(torch.logsumexp(log_w, 0)) - math.log(chains)
    spread = float(3 * log_w.std() / math.sqrt(chains)) if chains > 1 else float("inf")
    return log_z0 + log_mean_w, spread


def base_rate_bias(pixel_sum: torch.Tensor, count: float, smoothing: float = 5.0):
    """Visible biases of the base-rate model: logit of the smoothed pixel means."""
    mean = (pixel_sum + smoothing * 0.5) / (count + smoothing)
    return torch.log(mean) - torch.log1p(-mean)


class RBM(GenerativeModel):
    """Bernoulli RBM on binarized pixels; CD-k or PCD-k with SGD (momentum, weight decay)."""

    family = "rbm"
    validation_metric = "nll_nats"  # its likelihood on the val split
    config_class = RBMConfig
    networks = ("net",)
    ddp_kwargs = {"net": {"forward_sync_buffers": False}}  # each worker keeps its PCD chains
    supports_autocast = False  # CD's gradient is a small difference of large free energies

    def __init__(self, config: RBMConfig, image_shape: ImageShape):
        super().__init__(config, image_shape)
        visible = math.prod(image_shape)
        self.net = BernoulliRBM(visible, config.hidden)
        # PCD's persistent chains and the pixel means of the data seen (AIS's base-rate
        # model) are buffers: saved with the weights, restored on resume.
        chains = config.persistent_chains if config.persistent else 0
        self.net.register_buffer("chains", bernoulli(torch.full((chains, visible), 0.5)))
        self.net.register_buffer("pixel_sum", torch.zeros(visible))
        self.net.register_buffer("pixel_count", torch.zeros(()))
        self._log_z: tuple[tuple, float] | None = None

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        rbm = unwrap(self.net)
        groups = [{"params": [rbm.W], "weight_decay": self.config.weight_decay},
                  {"params": [rbm.b, rbm.c], "weight_decay": 0.0}]
        return {"net": torch.optim.SGD(groups, lr=self.config.lr,
                                       momentum=self.config.momentum)}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        rbm = unwrap(self.net)
        v_data = bernoulli(images.flatten(1))  # dynamic binarization
        with torch.no_grad():
            rbm.pixel_sum += images.flatten(1).sum(0)
            rbm.pixel_count += len(images)
            start = rbm.chains if self.config.persistent else v_data
            # CD: each chain starts at a training case and keeps that case's thinned RBM;
            # PCD: the persistent chains draw their own masks
            data_mask = self.dropout_mask(len(v_data))
            model_mask = self.dropout_mask(len(start)) if self.config.persistent else data_mask
            mask = None if data_mask is None else torch.cat([data_mask, model_mask])
            v_model, _ = rbm.gibbs(start, self.config.cd_k, mask=model_mask)
            if self.config.persistent:
                rbm.chains.copy_(v_model)
        free = self.net(torch.cat([v_data, v_model]), mask)
        loss = free[: len(v_data)].mean() - free[len(v_data):].mean()
        self.optimize("net", loss)
        self._log_z = None
        with torch.no_grad():
            recon = torch.sigmoid(rbm.visible_logits(rbm.hidden_probs(v_data)))
            recon_error = F.binary_cross_entropy(recon, v_data, reduction="none").sum(1).mean()
        return {"cd_loss": loss.item(), "recon_bce": recon_error.item()}

    def dropout_mask(self, rows: int) -> torch.Tensor | None:
        """A 0/1 hidden-unit mask per row (keep probability 1 − ``dropout``), or None.
        Dropout applies to training updates only; the full RBM generates and is scored."""
        if not self.config.dropout:
            return None
        rbm = unwrap(self.net)
        keep = torch.full((rows, rbm.c.numel()), 1 - self.config.dropout, device=rbm.W.device)
        return torch.bernoulli(keep)

    @torch.no_grad()
    def validation_step(self, images: torch.Tensor,
                        labels: torch.Tensor | None) -> dict[str, float]:
        """Reconstruction cross-entropy of binarized held-out images (``loss``) and their
        mean free energy (its gap to the training data's signals overfitting)."""
        rbm = unwrap(self.net)
        v = bernoulli(images.flatten(1))
        recon = torch.sigmoid(rbm.visible_logits(rbm.hidden_probs(v)))
        bce = F.binary_cross_entropy(recon, v, reduction="none").sum(1).mean()
        return {"loss": bce.item(), "free_energy": rbm(v).mean().item()}

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None,
               latents: torch.Tensor | None = None) -> torch.Tensor:
        self.sample_labels(num_samples, generator, labels)  # unconditional: no labels
        if latents is not None:
            raise DgmError("the RBM samples by Gibbs chains from noise: it takes no latents")
        rbm = unwrap(self.net)
        start = bernoulli(torch.full((num_samples, rbm.b.numel()), 0.5), generator)
        _, probs = rbm.gibbs(start.to(rbm.W.device), self.config.gibbs_steps, generator)
        return probs.cpu().view(num_samples, *self.image_shape)

    def load_weights(self, weights) -> None:
        super().load_weights(weights)
        self._log_z = None

    def base_rate_bias(self) -> torch.Tensor:
        """The AIS base model's visible biases, from the pixel means of the training data."""
        rbm = unwrap(self.net)
        return base_rate_bias(rbm.pixel_sum, float(rbm.pixel_count))

    @torch.no_grad()
    def log_partition(self, chains: int, generator: torch.Generator | None = None) -> float:
        """AIS estimate of log Z with ``chains`` chains and ``ais_betas`` distributions,
        cached until the weights change (a training step)."""
        rbm = unwrap(self.net)
        key = (chains, self.config.ais_betas)
        if self._log_z is None or self._log_z[0] != key:
            log_z, _ = ais_log_partition(rbm, self.base_rate_bias(), chains,
                                         self.config.ais_betas, generator)
            self._log_z = (key, log_z)
        return self._log_z[1]

    @torch.no_grad()
    def log_likelihood(self, images: torch.Tensor, num_samples: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(v) = −F(v) − log Z of ``images`` binarized stochastically with
        ``generator`` (pixel intensity = probability of 1, as for the published MNIST
        figures), log Z by AIS with ``num_samples`` chains (:meth:`log_partition`)."""
        rbm = unwrap(self.net)
        v = bernoulli(images.flatten(1).to(rbm.W.device), generator)
        return -rbm(v) - self.log_partition(num_samples, generator)
