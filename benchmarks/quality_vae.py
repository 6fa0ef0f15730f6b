"""VAE quality on MNIST: importance-sampled test NLL (nats) within a CPU budget.

Trains the MLP VAE 784-200-200-50 (Burda et al. 2015's architecture) on dynamically binarized
MNIST through the shared training loop — the ELBO (``vae``) and, with ``--methods vae,iwae``,
the IWAE bound with k = ``--iwae-k`` — each for its share of ``--budget-minutes`` with an
exponential learning-rate decay per epoch, then estimates the test NLL with
``--nll-samples`` importance samples per image on stochastically binarized test images.
With ``--samples``, also the MNIST evaluator's ``fid``, ``class_kl`` and ``modes_covered``
of the samples (the evaluator of ``quality_gan.py``). Figures: ``test_nll_nats_<method>``,
``wall_s_<method>``, ``epochs_<method>``, ….
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from _common import emit, mirror, parser, prepared, score_samples, train_for_budget
from torch.utils.data import DataLoader

from dgm.data.loading import load_split_tensors
from dgm.evaluation.likelihood import negative_log_likelihood
from dgm.models.base import ScheduleConfig
from dgm.models.vae import VAE, VAEConfig


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--budget-minutes", type=float, default=20.0, help="training, all methods")
    p.add_argument("--methods", default="vae", help="comma list of vae, iwae")
    p.add_argument("--iwae-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-gamma", type=float, default=0.99, help="per-epoch decay")
    p.add_argument("--nll-samples", type=int, default=1000)
    p.add_argument("--nll-images", type=int, default=10_000)
    p.add_argument("--samples", type=int, default=10_000,
                   help="generated images scored by the MNIST evaluator (0: skip)")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dgm-bench")
    args = p.parse_args()
    if mirror() is None:
        raise SystemExit("quality_vae: MNIST not found; set DGM_DATA_DIR to the IDX mirror")
    data = prepared("mnist", args.cache)
    train = load_split_tensors(data, "train")
    test = load_split_tensors(data, "test").tensors[0][: args.nll_images]
    methods = args.methods.split(",")
    figures: dict = {"budget_minutes": args.budget_minutes, "nll_samples": args.nll_samples,
                     "architecture": "784-200-200-50"}
    for method in methods:
        torch.manual_seed(0)
        config = VAEConfig(architecture="mlp", hidden=[200, 200], latent_dim=50, lr=args.lr,
                           binarize=True, iwae_samples=args.iwae_k if method == "iwae" else 1)
        model = VAE(config, (1, 28, 28)).setup(
            schedule=ScheduleConfig(kind="exponential", gamma=args.lr_gamma))
        loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)
        last, epochs, _, wall = train_for_budget(model, loader,
                                                 args.budget_minutes / len(methods))
        model.eval()
        nll_started = time.perf_counter()
        nll = negative_log_likelihood(model, test, args.nll_samples, seed=0, batch_size=100)
        figures.update({
            f"test_nll_nats_{method}": round(nll["nll_nats"], 2),
            f"test_nll_stderr_{method}": round(nll["nll_nats_stderr"], 2),
            f"epochs_{method}": epochs, f"wall_s_{method}": round(wall, 1),
            f"nll_s_{method}": round(time.perf_counter() - nll_started, 1),
            f"final_train_loss_{method}": round(last["loss"], 2),
        })
        if args.samples:
            figures.update(score_samples(model, "mnist", args.cache, args.samples,
                                         ("fid", "class_kl", "modes_covered"), f"_{method}"))
        print(method, figures, flush=True)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
