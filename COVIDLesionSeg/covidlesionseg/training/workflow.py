"""``covidlesionseg train``: gather cases, train or fine-tune, evaluate before and after, register a new version.

Data: generated CT (``--generated N``, with painted lesions and look-alikes on half of them), real normal
chests from the shared data folder with painted lesions (``--real-data DIR``), and any labelled dataset a
user has (``--data``: an export folder of the correction loop, an nnU-Net v2 raw dataset, a MONAI datalist,
or ``IMAGES:LABELS`` folders; ``covidlesionseg.datasets``).  Validation cases are held out by case (by the
pseudonymous patient key for datasets), never seen in training.  Fine-tuning (``--init MODEL_ID``) starts
from a registered model's verified weights, with a tenth of the learning rate, and is evaluated on the same
held-out cases before and after.  The result is registered as a new model version in the user registry
(parent id, data summary, metrics, sha256); the shipped model and the default engine are never changed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from covidlesionseg import __version__, models, weights
from covidlesionseg.io import InputError
from covidlesionseg.training.cases import (
    CLASS_NAMES,
    HU_WINDOW,
    TRAIN_SPACING,
    labelled_case,
    load_case,
    prepare_synthetic,
    save_case,
)
from covidlesionseg.training.trainer import BEST, TrainConfig, Trainer, evaluate_cases

VALIDATION_SEED_START = 9000  # generated validation cases use seeds from here (training uses 1000+)
FINE_TUNE_LR_FACTOR = 0.1


def _is_validation(patient_key: str, fraction: float) -> bool:
    digest = hashlib.sha256(patient_key.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def dataset_cases(specs: Sequence[str], folder: Path, label_map: str | None, val_fraction: float,
                  say: Callable[[str], None]) -> tuple[list[Path], list[Path], dict[str, Any]]:
    """Cache users' labelled cases; split them into training and validation paths by patient key."""
    from covidlesionseg.datasets import load_training_cases

    train: list[Path] = []
    val: list[Path] = []
    summary: dict[str, Any] = {"datasets": [], "cases": 0}
    for spec in specs:
        found = load_training_cases(spec, label_map=label_map)
        summary["datasets"].append({"spec": Path(str(spec)).name, "cases": len(found)})
        keys = sorted({c.patient_key for c in found})
        held = {k for k in keys if _is_validation(k, val_fraction)}
        if not held and len(keys) >= 2:  # at least one patient held out
            held = {keys[-1]}
        for case in found:
            # An export re-exports a corrected case under the same id: the cache keys on id and version.
            name = f"data_{case.case_id}" + (f"_v{case.version}" if case.version is not None else "")
            target = folder / f"{name}.npz"
            if not target.exists():
                say(f"preparing dataset case {case.case_id}")
                save_case(folder, labelled_case(Path(case.image), Path(case.label), dict(case.lut), name,
                                                lung_labelled=case.lung_labelled))
            (val if case.patient_key in held else train).append(target)
        summary["cases"] += len(found)
    summary["validation_cases"] = len(val)
    return train, val, summary


def run_training(out: str | Path, *, data: Sequence[str] = (), generated: int = 0, real_data: str | Path | None = None,
                 real_variants: int = 8, validation_generated: int = 4, init: str | None = None,
                 architecture: str = "compact_res_unet", network: dict | None = None, max_steps: int = 3000,
                 device: str = "auto", seed: int = 0, label_map: str | None = None, model_id: str | None = None,
                 val_fraction: float = 0.2, register: bool = True, threads: int = 0, grow_pool: bool = False,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or fine-tune) and register; returns {"model_id", "entry", "before", "after", "run_dir"}."""
    run_dir = Path(out)
    cases_dir = run_dir / "cases"
    if not data and generated <= 0 and real_data is None:
        raise InputError("no training data: give --data, --generated N or --real-data DIR")
    train_paths: list[Path] = []
    val_paths: list[Path] = []
    summary: dict[str, Any] = {}
    if data:
        t, v, summary = dataset_cases(data, cases_dir, label_map, val_fraction, say)
        train_paths += t
        val_paths += v
    if generated > 0 or real_data is not None:
        real_root = Path(real_data) if real_data is not None else None
        train_paths += prepare_synthetic(cases_dir, max(0, generated), real_root, real_variants, seed, progress=say)
        summary["generated_cases"] = int(generated)
        summary["real_painted_cases"] = sum(1 for p in train_paths if p.stem.startswith("real_"))
    if validation_generated > 0 and (generated > 0 or not val_paths):
        val_paths += prepare_synthetic(cases_dir, validation_generated, None, 0, seed,
                                       first_seed=VALIDATION_SEED_START, progress=say)
    summary["training_cases"] = len(train_paths)
    summary["validation_cases"] = len(val_paths)

    init_state = None
    parent = None
    config = TrainConfig(architecture=architecture, network=dict(network or {"in_channels": 1, "out_channels": 3}),
                         max_steps=int(max_steps), seed=int(seed), threads=int(threads))
    if init is not None:
        parent = models.get_model(init)
        if parent.get("architecture") == models.CLASSICAL_ID:
            raise InputError("the classical engine has no weights to fine-tune; --init takes a network model id")
        if len(parent.get("outputs") or []) != len(CLASS_NAMES):
            raise InputError(f"model {init!r} does not predict {', '.join(CLASS_NAMES)}; it cannot be fine-tuned here")
        init_state = weights.load_state_dict(weights.fetch_weights(parent), str(parent["sha256"]))
        config = replace(config, architecture=str(parent["architecture"]), network=dict(parent.get("network") or {}),
                         max_lr=config.max_lr * FINE_TUNE_LR_FACTOR, warmup_fraction=0.1,
                         patch_schedule=((0.0, tuple(parent["roi_size"])),),
                         validate_every=max(1, min(config.validate_every, int(max_steps))))
    val_names = {p.name for p in val_paths}

    def pool() -> list[Path]:
        def held_out(p: Path) -> bool:
            return p.name in val_names or (p.stem.startswith("gen") and int(p.stem[3:]) >= VALIDATION_SEED_START)

        return [p for p in sorted(cases_dir.glob("*.npz"))
                if not held_out(p) and (p.stem.startswith(("gen", "real_")) or p in train_paths)]

    trainer = Trainer(run_dir, train_paths, val_paths, config, device=device, init_state=init_state, log=say,
                      pool=pool if grow_pool else None)
    val_cases = [load_case(p) for p in val_paths]
    roi = config.patch_schedule[-1][1]
    before = None
    if init_state is not None and val_cases:
        from covidlesionseg.networks import build_network

        reference_net = build_network(config.architecture, **config.network)
        reference_net.load_state_dict(init_state)
        before = evaluate_cases(reference_net, val_cases, roi, trainer.device)
        say(f"before fine-tuning: lesion Dice {before['mean_lesion_dice']:.4f}, lung Dice "
            f"{before['mean_lung_dice']:.4f} on {len(val_cases)} held-out cases")
    t0 = time.monotonic()
    outcome = trainer.run()
    best_state = torch.load(run_dir / BEST, map_location="cpu", weights_only=True)
    trainer.net.load_state_dict(best_state)
    after = evaluate_cases(trainer.net, val_cases, roi, trainer.device) if val_cases else None
    if after:
        say(f"after training: lesion Dice {after['mean_lesion_dice']:.4f}, lung Dice {after['mean_lung_dice']:.4f} "
            f"on {len(val_cases)} held-out cases")
    entry = {
        "id": model_id or f"{init or architecture}-{time.strftime('%Y%m%d-%H%M%S')}",
        "architecture": config.architecture, "network": config.network, "outputs": list(CLASS_NAMES),
        "spacing": list(TRAIN_SPACING), "hu_window": list(HU_WINDOW), "roi_size": list(roi),
        "parent": init, "version": "1",
        "metrics": {"validation_before": _means(before), "validation_after": _means(after)},
        "training": {"data": summary, "steps": outcome["step"], "best_step": outcome["best"]["step"],
                     "seconds": round(time.monotonic() - t0, 1), "software_version": __version__,
                     "recipe": "Dice+CE, AdamW, one-cycle LR with warm-up, progressive patches, MONAI augmentation"},
        "description": f"{'fine-tuned from ' + init if init else 'trained'} on {summary.get('training_cases')} cases",
    }
    result: dict[str, Any] = {"run_dir": str(run_dir), "before": before, "after": after, "entry": entry,
                              "model_id": None, "finished": outcome["finished"]}
    if register and outcome["finished"]:
        stored = models.register_model(entry, run_dir / BEST)
        result["model_id"] = stored["id"]
        result["entry"] = stored
    return result


def _means(result: dict | None) -> dict | None:
    if not result:
        return None
    return {"lesion_dice": result["mean_lesion_dice"], "lung_dice": result["mean_lung_dice"],
            "cases": len(result["cases"])}
