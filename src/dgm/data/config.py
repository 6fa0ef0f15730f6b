"""The ``data`` section of the params: which dataset, how it is split and sharded."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dgm.section import Section, Seed


class StackedConfig(Section):
    """Stacked datasets (``stacked-mnist``): images drawn per split and their seed."""

    train_size: Annotated[int, Field(gt=1)] = 60_000
    test_size: Annotated[int, Field(gt=1)] = 10_000
    seed: Seed = 0


class FolderConfig(Section):
    """``data.name: folder``: a folder of image files (class sub-folders → labels)."""

    path: str = "data"  # the image folder: relative to the project root, or absolute
    # target side in pixels: the networks and the evaluator halve it at least twice
    resolution: Annotated[int, Field(ge=8, le=512, multiple_of=4)] = 32
    channels: Literal[1, 3] = 3
    labels: Literal["auto", "none"] = "auto"  # auto: class sub-folders, else unlabelled
    resize: Literal["crop", "stretch", "pad"] = "crop"  # crop: shorter side, centre crop


class DataConfig(Section):
    name: str = "digits"
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2  # datasets without a test split
    seed: Seed = 0
    shard_rows: Annotated[int, Field(gt=0)] = 20_000
    allow_download: bool = False
    stacked: StackedConfig = StackedConfig()
    folder: FolderConfig = FolderConfig()
    on_bad_image: Literal["error", "skip"] = "error"  # folder: a file that does not decode
