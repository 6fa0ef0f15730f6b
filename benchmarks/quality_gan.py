"""GAN quality on MNIST and stacked MNIST within a CPU budget: FID, class KL, modes.

On MNIST (``--budget-minutes``) trains a class-conditional DCGAN (one-hot class into G,
projection discriminator, asked for every class alike when sampling; ``--unconditional``: a
DCGAN with PacGAN packing ``--pack`` instead), non-saturating loss, generator EMA with its
BatchNorm statistics recomputed each epoch, through the shared training loop; on stacked
MNIST (1000 modes, ``--stacked-minutes``) the unconditional PacGAN. ``--samples`` images of
each are scored by the pipeline's evaluator of the dataset (trained once with
configs/params.yaml and cached). Figures: ``fid``, ``kid``, ``class_kl``, ``modes_covered``,
``precision``/``recall``, ``label_accuracy`` (conditional), ``stacked_modes_covered``,
``stacked_mode_kl``, ``wall_s`` (training) per dataset.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _common import emit, evaluator, mirror, parser, score_samples, train_for_budget
from torch.utils.data import DataLoader

from dgm.data.loading import load_split_tensors
from dgm.models.gan import DCGAN, GANConfig

KEYS = ("fid", "kid", "class_kl", "modes_covered", "precision", "recall", "mode_kl")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--budget-minutes", type=float, default=14.0, help="MNIST (0: skip)")
    p.add_argument("--unconditional", action="store_true",
                   help="MNIST: the unconditional PacGAN instead of the conditional GAN")
    p.add_argument("--stacked-minutes", type=float, default=8.0, help="0: skip stacked MNIST")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--loss", default="nonsaturating")
    p.add_argument("--pack", type=int, default=2, help="PacGAN packing (unconditional runs)")
    p.add_argument("--lr-d", type=float, default=2e-4)
    p.add_argument("--lr-g", type=float, default=2e-4)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dgm-bench")
    args = p.parse_args()
    if mirror() is None:
        raise SystemExit("quality_gan: MNIST not found; set DGM_DATA_DIR to the IDX mirror")
    unconditional = {"loss": args.loss, "pack": args.pack}
    mnist_model = unconditional if args.unconditional else {"loss": args.loss,
                                                            "conditional": True}
    figures: dict = {"budget_minutes": args.budget_minutes, "loss": args.loss,
                     "conditional": not args.unconditional,
                     "pack": mnist_model.get("pack", 1), "stacked_pack": args.pack,
                     "stacked_minutes": args.stacked_minutes, "samples": args.samples}
    runs = [("mnist", "", args.budget_minutes, mnist_model)] if args.budget_minutes > 0 else []
    if args.stacked_minutes > 0:
        runs.append(("stacked-mnist", "stacked_", args.stacked_minutes, unconditional))
    for dataset, prefix, minutes, variant in runs:
        _, data_dir = evaluator(dataset, args.cache)
        data = load_split_tensors(data_dir, "train")
        shape = tuple(data.tensors[0].shape[1:])
        torch.manual_seed(0)
        model = DCGAN(GANConfig(width=args.width, latent_dim=args.latent_dim,
                                ema_decay=args.ema_decay, lr_d=args.lr_d, lr_g=args.lr_g,
                                **variant), shape).setup()
        loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
        _, epochs, steps, wall = train_for_budget(model, loader, minutes, log_every=1)
        scores = score_samples(model, dataset, args.cache, args.samples, KEYS)
        figures.update({f"{prefix}{k}": v for k, v in scores.items()})
        figures.update({f"{prefix}epochs": epochs, f"{prefix}steps": steps,
                        f"{prefix}wall_s": round(wall, 1)})
        print(dataset, figures, flush=True)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
