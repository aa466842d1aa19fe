"""The one trainer: trains the lung-and-lesion network from scratch or fine-tunes a registered model.

Recipe after Bressem et al. 2021: Dice + cross-entropy (MONAI ``DiceCELoss``), AdamW with a one-cycle
learning rate and warm-up (``torch.optim.lr_scheduler.OneCycleLR``), progressive patch sizes (small patches
first, larger later), rotation / mirroring / contrast / brightness / noise / blur / sharpening / low-resolution
augmentation (MONAI transforms), validation by sliding-window inference on held-out cases, and the
best-validation weights kept.  Everything about a run lives in its folder: ``checkpoint.pt`` (written
atomically every ``checkpoint_every`` steps; read back with ``weights_only=True``), ``best.pt`` (state dict),
``log.jsonl``, ``curve.png`` and ``run.json``.  Running the same command again resumes from the checkpoint.
Randomness is drawn from ``numpy.random.default_rng([seed, step])``, so a resumed run continues exactly as
an uninterrupted one would, given the same cases.  With a ``pool``, cases that a preparation still running
adds to the case folder join the training set every ``POOL_REFRESH_STEPS`` steps (then the set of cases, and
so the run, depends on when they arrived).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidlesionseg.inference import normalize_hu, resolve_device
from covidlesionseg.io import InputError, write_json
from covidlesionseg.metrics import dice
from covidlesionseg.networks import build_network, count_parameters
from covidlesionseg.training.cases import HU_WINDOW, IGNORE, LESION, LUNG, Case, load_case
from covidlesionseg.weights import save_torch

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
LOG = "log.jsonl"
CURVE = "curve.png"
RUN = "run.json"
POOL_REFRESH_STEPS = 50


@dataclass
class TrainConfig:
    """Settings of one run (stored in run.json; a resumed run must use the same ones)."""

    architecture: str = "compact_res_unet"
    network: dict = field(default_factory=lambda: {"in_channels": 1, "out_channels": 3})
    max_steps: int = 3000
    batch_size: int = 2
    max_lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup_fraction: float = 0.05
    # (fraction of max_steps from which it applies, patch size k j i): progressive patch sizes
    patch_schedule: tuple = ((0.0, (48, 80, 80)), (0.35, (64, 96, 96)))
    lesion_centre_probability: float = 0.5
    lung_centre_probability: float = 0.3
    validate_every: int = 250
    checkpoint_every: int = 25
    seed: int = 0
    threads: int = 0  # 0: torch's default


def _patch_size(config: TrainConfig, step: int) -> tuple[int, int, int]:
    size = config.patch_schedule[0][1]
    for start, patch in config.patch_schedule:
        if step >= start * config.max_steps:
            size = patch
    return tuple(int(s) for s in size)


def augmentation(seed: int):
    """MONAI dictionary transforms on {"image": HU (1, k, j, i), "label": classes (1, k, j, i)}; the image is
    windowed and normalised at the end (``inference.normalize_hu``: the one place it is defined)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSharpend,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSimulateLowResolutiond,
    )

    keys = ["image", "label"]
    transform = Compose([
        RandAffined(keys, prob=0.35, rotate_range=(0.25, 0.1, 0.1), scale_range=(0.12, 0.12, 0.12),
                    mode=("bilinear", "nearest"), padding_mode="border"),
        RandFlipd(keys, prob=0.5, spatial_axis=2),
        RandFlipd(keys, prob=0.2, spatial_axis=1),
        RandFlipd(keys, prob=0.2, spatial_axis=0),
        RandShiftIntensityd("image", offsets=40.0, prob=0.5),  # HU calibration off by tens of HU
        RandScaleIntensityd("image", factors=0.04, prob=0.3),
        RandGaussianSmoothd("image", sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), sigma_z=(0.3, 1.2), prob=0.2),
        RandGaussianSharpend("image", prob=0.1),
        RandSimulateLowResolutiond("image", zoom_range=(0.3, 1.0), prob=0.2),
        RandGaussianNoised("image", std=35.0, prob=0.35),  # low-dose noise
        RandAdjustContrastd("image", gamma=(0.85, 1.2), prob=0.15, retain_stats=True),
    ])
    transform.set_random_state(seed=seed)
    return transform


def sample_patch(case: Case, size: Sequence[int], rng: np.random.Generator, lesion_p: float,
                 lung_p: float) -> tuple[np.ndarray, np.ndarray]:
    """A (k, j, i) patch of HU and classes centred on a lesion, lung or random voxel (padded with air)."""
    draw = rng.uniform()
    target = LESION if draw < lesion_p else (LUNG if draw < lesion_p + lung_p else None)
    centre = None
    if target is not None:
        where = np.flatnonzero(case.classes.ravel() == target) if target == LESION else None
        if target == LUNG:
            where = np.flatnonzero(case.classes.ravel() >= LUNG)
        if where is not None and where.size:
            centre = np.array(np.unravel_index(int(where[rng.integers(where.size)]), case.classes.shape))
    if centre is None:
        centre = np.array([rng.integers(0, n) for n in case.classes.shape])
    start = centre - np.asarray(size) // 2 + rng.integers(-8, 9, 3)
    image = np.full(size, -1024, np.float32)
    label = np.zeros(size, np.uint8)
    src, dst = [], []
    for s, n, m in zip(start, case.classes.shape, size):
        lo, hi = max(0, int(s)), min(n, int(s) + m)
        if hi <= lo:
            lo, hi = 0, 0
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s), lo - int(s) + (hi - lo)))
    image[tuple(dst)] = case.image[tuple(src)]
    label[tuple(dst)] = case.classes[tuple(src)]
    return image, label


def predict_case(net: torch.nn.Module, image_hu: np.ndarray, roi: Sequence[int], device: torch.device,
                 overlap: float = 0.25) -> np.ndarray:
    """Class map of a case on its own (training) grid by MONAI sliding-window inference."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(normalize_hu(image_hu.astype(np.float32), HU_WINDOW))[None, None]
    net.eval()
    with torch.inference_mode():
        logits = sliding_window_inference(x, list(roi), 1, net, overlap=overlap, mode="gaussian",
                                          sw_device=device, device=torch.device("cpu"))
    return logits[0].argmax(0).numpy().astype(np.uint8)


def evaluate_cases(net: torch.nn.Module, cases: Sequence[Case], roi: Sequence[int], device: torch.device
                   ) -> dict[str, Any]:
    """Lesion and lung Dice per case and their means."""
    rows = []
    for case in cases:
        pred = predict_case(net, case.image, roi, device)
        valid = case.classes != IGNORE
        rows.append({"id": case.case_id,
                     "lesion_dice": round(dice((pred == LESION) & valid, (case.classes == LESION) & valid), 4),
                     "lung_dice": round(dice((pred >= LUNG) & valid, (case.classes >= LUNG) & valid), 4)})
    mean = {k: round(float(np.mean([r[k] for r in rows])), 4) if rows else 0.0 for k in ("lesion_dice", "lung_dice")}
    return {"cases": rows, **{f"mean_{k}": v for k, v in mean.items()}}


def plot_curve(log_path: Path, out: Path) -> None:
    """Training loss and validation Dice against steps (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "mean_lesion_dice" in r]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        steps = np.array([r["step"] for r in train])
        loss = np.array([r["loss"] for r in train])
        ax[0].plot(steps, loss, lw=0.5, alpha=0.4, label="loss")
        k = max(1, len(loss) // 50)
        ax[0].plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, "valid"), lw=1.5, label=f"mean of {k}")
    ax[0].set(xlabel="step", ylabel="Dice + CE loss", title="training loss")
    ax[0].legend()
    if val:
        ax[1].plot([r["step"] for r in val], [r["mean_lesion_dice"] for r in val], "o-", label="lesion Dice")
        ax[1].plot([r["step"] for r in val], [r["mean_lung_dice"] for r in val], "s-", label="lung Dice")
    ax[1].set(xlabel="step", ylabel="Dice", ylim=(0, 1), title="validation (held-out cases)")
    ax[1].legend()
    fig.tight_layout()
    tmp = out.with_suffix(".part.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)


class Trainer:
    """Train (or fine-tune, from ``init_state``) on cached cases; resumable from ``run_dir``."""

    def __init__(self, run_dir: str | os.PathLike, train_paths: Sequence[Path], val_paths: Sequence[Path],
                 config: TrainConfig, *, device: str = "auto", init_state: dict | None = None,
                 log: Callable[[str], None] | None = None, pool: Callable[[], list[Path]] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.say = log or print
        if not train_paths:
            raise InputError("no training cases")
        self.train_paths = [Path(p) for p in train_paths]
        self.val_paths = [Path(p) for p in val_paths]
        self.pool = pool
        self.device = resolve_device(device)
        if config.threads:
            torch.set_num_threads(int(config.threads))
        torch.manual_seed(config.seed)
        self.net = build_network(config.architecture, **config.network).to(self.device)
        if init_state is not None:
            self.net.load_state_dict(init_state, strict=True)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.max_lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=config.max_lr, total_steps=max(2, config.max_steps),
            pct_start=config.warmup_fraction)
        from monai.losses import DiceCELoss

        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        self.step = 0
        self.best: dict[str, Any] = {"score": -1.0, "step": None}
        self._cases: dict[Path, Case] = {}
        self._resume_or_start()

    # --- state --------------------------------------------------------------------------------------
    def _run_record(self) -> dict:
        cfg = asdict(self.config)
        return {"config": cfg, "train_cases": [p.stem for p in self.train_paths],
                "val_cases": [p.stem for p in self.val_paths]}

    def _resume_or_start(self) -> None:
        record = self.run_dir / RUN
        ckpt = self.run_dir / CHECKPOINT
        if ckpt.is_file():
            saved = json.loads(record.read_text()) if record.is_file() else {}
            if saved.get("config") and saved["config"] != json.loads(json.dumps(asdict(self.config))):
                raise InputError(f"{self.run_dir} holds a run with other settings; use a new folder to change them")
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            self.net.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            self.best = {"score": float(state["best_score"]), "step": state["best_step"]}
            self.say(f"resumed at step {self.step} (best validation {self.best['score']:.4f} "
                     f"at step {self.best['step']})")
        else:
            write_json(record, self._run_record())
            self.say(f"new run: {count_parameters(self.net):,} parameters, {len(self.train_paths)} training and "
                     f"{len(self.val_paths)} validation cases, device {self.device.type}")

    def _checkpoint(self) -> None:
        save_torch({"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "scheduler": self.scheduler.state_dict(), "step": self.step,
                      "best_score": float(self.best["score"]), "best_step": self.best["step"]},
                     self.run_dir / CHECKPOINT)

    def _case(self, path: Path) -> Case:
        if path not in self._cases:
            self._cases[path] = load_case(path)
        return self._cases[path]

    def _log(self, row: dict) -> None:
        with open(self.run_dir / LOG, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    # --- loop ---------------------------------------------------------------------------------------
    def _batch(self, rng: np.random.Generator, size: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        transform = augmentation(int(rng.integers(2**31)))
        images, labels = [], []
        for _ in range(self.config.batch_size):
            case = self._case(self.train_paths[int(rng.integers(len(self.train_paths)))])
            image, label = sample_patch(case, size, rng, self.config.lesion_centre_probability,
                                        self.config.lung_centre_probability)
            label = np.where(label == IGNORE, 0, label)
            out = transform({"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label)[None]})
            hu = out["image"].as_tensor() if hasattr(out["image"], "as_tensor") else out["image"]
            lab = out["label"].as_tensor() if hasattr(out["label"], "as_tensor") else out["label"]
            images.append(torch.from_numpy(normalize_hu(hu.numpy(), HU_WINDOW)))
            labels.append(lab.round().to(torch.long))
        return torch.stack(images).to(self.device), torch.stack(labels).to(self.device)

    def _refresh_pool(self) -> None:
        """Cases added to the run's case folder while it trains (a preparation still running) join the pool."""
        held = set(self.val_paths)
        fresh = sorted(p for p in self.pool() if p not in held and p not in set(self.train_paths))
        if fresh:
            self.train_paths = sorted(set(self.train_paths) | set(fresh))
            self.say(f"{len(fresh)} new training cases; {len(self.train_paths)} in all")

    def validate(self) -> dict[str, Any]:
        roi = self.config.patch_schedule[-1][1]
        result = evaluate_cases(self.net, [self._case(p) for p in self.val_paths], roi, self.device)
        self.net.train()
        return result

    def run(self, max_steps: int | None = None, time_limit_s: float | None = None) -> dict[str, Any]:
        """Train until ``max_steps`` (the config's by default) or ``time_limit_s``; returns the best record."""
        stop_at = min(self.config.max_steps, max_steps or self.config.max_steps)
        t_start = time.monotonic()
        self.net.train()
        window: list[float] = []
        while self.step < stop_at:
            if self.pool is not None and self.step % POOL_REFRESH_STEPS == 0:
                self._refresh_pool()
            rng = np.random.default_rng([self.config.seed, self.step])
            size = _patch_size(self.config, self.step)
            t0 = time.perf_counter()
            x, y = self._batch(rng, size)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.net(x), y)
            if not torch.isfinite(loss):
                raise RuntimeError(f"training diverged at step {self.step} (loss {loss.item()})")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12.0)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            window.append(float(loss.item()))
            self._log({"step": self.step, "loss": round(float(loss.item()), 5), "patch": list(size),
                       "lr": self.scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 3)})
            if self.step % 10 == 0:
                self.say(f"step {self.step}/{stop_at} loss {np.mean(window):.4f} patch {size} "
                         f"{time.perf_counter() - t0:.2f} s/step")
                window = []
            validate = self.val_paths and (self.step % self.config.validate_every == 0 or self.step == stop_at)
            if validate:
                result = self.validate()
                score = 0.5 * (result["mean_lesion_dice"] + result["mean_lung_dice"])
                self._log({"step": self.step, **result})
                if score > self.best["score"]:
                    self.best = {"score": score, "step": self.step}
                    save_torch(self.net.state_dict(), self.run_dir / BEST)
                self.say(f"validation at step {self.step}: lesion Dice {result['mean_lesion_dice']:.4f}, lung Dice "
                         f"{result['mean_lung_dice']:.4f} (best {self.best['score']:.4f} at {self.best['step']})")
                plot_curve(self.run_dir / LOG, self.run_dir / CURVE)
            if self.step % self.config.checkpoint_every == 0 or validate or self.step == stop_at:
                self._checkpoint()
            if time_limit_s is not None and time.monotonic() - t_start > time_limit_s:
                self._checkpoint()
                break
        if not (self.run_dir / BEST).exists():
            save_torch(self.net.state_dict(), self.run_dir / BEST)
        return {"step": self.step, "best": self.best, "finished": self.step >= self.config.max_steps}


def steps_for(seconds: float, seconds_per_step: float) -> int:
    return max(1, math.floor(seconds / max(seconds_per_step, 1e-6)))
