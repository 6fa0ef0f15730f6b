"""RBM quality on MNIST: AIS test log-likelihood (nats) for CD-k and PCD within a CPU budget.

Trains a Bernoulli RBM (``--hidden`` units, dynamically binarized MNIST, SGD with momentum
and weight decay) through the shared training loop for each method until its
``--budget-minutes`` are spent (PCD with its own learning rate, ``--pcd-lr``, annealed to zero
over the budget by a cosine of the elapsed wall-clock time: persistent chains need a small,
decaying rate to stay near the model's distribution, Tieleman 2008), then estimates log Z by AIS
from the base-rate model (``--ais-chains`` × ``--ais-betas``) and reports the mean log-likelihood of
the stochastically binarized test images. With ``--samples``, also the MNIST evaluator's
``fid``, ``class_kl`` and ``modes_covered`` of Gibbs samples (the evaluator of
``quality_gan.py``). Figures: ``test_loglik_nats_<method>``, ``wall_s_<method>``, ….
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from _common import emit, mirror, parser, prepared, score_samples, train_for_budget
from torch.utils.data import DataLoader

from dgm.data.loading import load_split_tensors
from dgm.evaluation.likelihood import negative_log_likelihood
from dgm.models.rbm import RBM, RBMConfig

METHODS = {"cd1": {"cd_k": 1, "persistent": False}, "pcd": {"cd_k": 1, "persistent": True}}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--budget-minutes", type=float, default=15.0,
                   help="training per method (15: PCD reaches its goal; CD-1 does in 4)")
    p.add_argument("--methods", default="cd1,pcd")
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--pcd-lr", type=float, default=0.01)
    p.add_argument("--ais-chains", type=int, default=100)
    p.add_argument("--ais-betas", type=int, default=10_000)
    p.add_argument("--samples", type=int, default=10_000,
                   help="generated images scored by the MNIST evaluator (0: skip)")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dgm-bench")
    args = p.parse_args()
    if mirror() is None:
        raise SystemExit("quality_rbm: MNIST not found; set DGM_DATA_DIR to the IDX mirror")
    data = prepared("mnist", args.cache)
    train = load_split_tensors(data, "train")
    test = load_split_tensors(data, "test").tensors[0]
    methods = args.methods.split(",")
    figures: dict = {"hidden": args.hidden, "budget_minutes": args.budget_minutes}
    for method in methods:
        torch.manual_seed(0)
        persistent = METHODS[method]["persistent"]
        config = RBMConfig(hidden=args.hidden, lr=args.pcd_lr if persistent else args.lr,
                           ais_betas=args.ais_betas, persistent_chains=args.batch_size,
                           **METHODS[method])
        model = RBM(config, (1, 28, 28)).setup()
        loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
        minutes = args.budget_minutes

        def on_epoch(epoch: int, seconds: float, model=model, persistent=persistent,
                     minutes=minutes, lr=config.lr) -> None:
            groups = model.optimizers["net"].param_groups
            if persistent:  # cosine in wall-clock time: lr reaches 0 as the budget ends
                progress = min(1.0, seconds / (60 * minutes))
                for group in groups:
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * progress))
            if epoch == 5:  # momentum 0.5 → 0.9 after the first epochs (Hinton's guide)
                for group in groups:
                    group["momentum"] = 0.9

        last, epochs, _, wall = train_for_budget(model, loader, minutes, on_epoch)
        model.eval()
        ais_started = time.perf_counter()
        nll = negative_log_likelihood(model, test, args.ais_chains, seed=0, batch_size=10_000)
        figures.update({
            f"test_loglik_nats_{method}": round(-nll["nll_nats"], 2),
            f"test_loglik_stderr_{method}": round(nll["nll_nats_stderr"], 2),
            f"log_z_{method}": round(model.log_partition(args.ais_chains), 2),
            f"epochs_{method}": epochs, f"wall_s_{method}": round(wall, 1),
            f"ais_s_{method}": round(time.perf_counter() - ais_started, 1),
            f"final_recon_bce_{method}": round(last["recon_bce"], 2),
        })
        if args.samples:
            figures.update(score_samples(model, "mnist", args.cache, args.samples,
                                         ("fid", "class_kl", "modes_covered"), f"_{method}"))
        print(method, figures, flush=True)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
