"""``nnunet-losses demo``: the central result of Bertels et al. 2020 (*Optimization with soft Dice can lead to a
volumetric bias*), from exact theory to a real nnU-Net experiment.

For each inherent uncertainty p (default 0.2 and 0.8) the demo

1. writes a 2D phantom (:mod:`nnunet_losses.research.phantom`): a certain core plus N uncertain ring sectors, each drawn
   into the reference with probability p -- the image cannot tell whether a sector was drawn in;
2. runs nnU-Net for real: ``nnUNetv2_plan_and_preprocess``, then ``nnUNetv2_train ... --npz`` with
   ``nnUNetTrainer_CEonly`` and ``nnUNetTrainer_SoftDice`` (short schedule through the ``NNUNET_LOSSES_*``
   variables), which writes the fold's validation probabilities;
3. evaluates both trainers on nnU-Net's validation output (:mod:`nnunet_losses.evaluation`) and compares them
   (bootstrap + Wilcoxon, as in the paper's Table 1);
4. prints the table -- CE (NLL), the soft Dice score (the paper's 1 - SD), soft volume error dV = V(pred) - V(ref) with its significance --
   next to the theory's prediction for the same phantom, and saves a plot;
5. with both default trainers, measures Nordstrom's claim: the CE model's Dice under each decision rule
   (Dice-optimal, RankSEG-RMA, ...) against the soft-Dice model's argmax, paired per case
   (:mod:`nnunet_losses.research.decision_claim`).

The theory (the paper's Sect. 2.2, :mod:`nnunet_losses.research.theory`): the soft-Dice-optimal prediction in the uncertain
sectors is 0 below the flip threshold (~0.44 for N = 4, mu = 1) and 1 above it, so soft Dice *under*-estimates
the volume at p = 0.2 and *over*-estimates it at p = 0.8, by about 0.2 x the uncertain volume; cross-entropy's
optimum is p itself, so its expected (soft) volume is unbiased. Volumes are soft (sum of probabilities x voxel
volume), as in the paper's Eq. 3; the hard (argmax) volume of a calibrated CE model has the same threshold
effect and is reported too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

from nnunet_losses.research import PAPER_SHORT

DEFAULT_TRAINERS = ("nnUNetTrainer_CEonly", "nnUNetTrainer_SoftDice")


def _bin(name: str) -> str:
    """A console script of the running environment (nnU-Net's CLIs live next to this Python)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class _Step:
    """Prints one line per pipeline step with its wall time (long steps show nnU-Net's own output in a log)."""

    def __init__(self, log_dir: Path, quiet: bool = False):
        self.log_dir, self.quiet, self.t0 = log_dir, quiet, time.time()

    def run(self, title: str, cmd: List[str], env: Dict[str, str], log_name: str) -> None:
        start = time.time()
        log = self.log_dir / log_name
        if not self.quiet:
            print(f"[{time.time() - self.t0:6.0f} s] {title} ...", flush=True)
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}\n{tail}")
        if not self.quiet:
            print(f"[{time.time() - self.t0:6.0f} s]   done in {time.time() - start:.0f} s (log: {log})", flush=True)


def _environments(workdir: Path, device: str, epochs: int, iterations: int, val_iterations: int):
    """(folders, env for nnU-Net's planning, env for its training): nnU-Net's three folders inside ``workdir``."""
    from nnunet_losses.trainers import trainer_path
    folders = {k: workdir / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "evaluation", "logs")}
    for d in folders.values():
        d.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{k: str(folders[k]) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")},
               nnUNet_extTrainer=str(trainer_path()), nnUNet_compile="false",
               # -device cpu sets torch's threads to the core count; OpenMP's default busy-waiting then makes
               # every op crawl as soon as anything else runs on the machine (measured ~20x on 2 cores)
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               # nnU-Net's export pools default to 8 spawned workers, each importing torch
               nnUNet_def_n_proc=os.environ.get("nnUNet_def_n_proc", str(min(8, os.cpu_count() or 2))))
    train_env = dict(env, nnUNet_n_proc_DA="0" if device == "cpu" else env.get("nnUNet_n_proc_DA", "8"),
                     NNUNET_LOSSES_EPOCHS=str(epochs), NNUNET_LOSSES_ITERATIONS=str(iterations),
                     NNUNET_LOSSES_VAL_ITERATIONS=str(val_iterations))
    return folders, env, train_env


def _theory_for(sidecar_cases: dict, cases: Sequence[str], p: float, n_subregions: int, mu: float) -> dict:
    """The theory's volume errors for exactly the validated ``cases`` (soft Dice against their *expected* volume)."""
    from nnunet_losses.research import theory
    sd = [sidecar_cases[c]["theory_sd_volume_ml"] - sidecar_cases[c]["expected_volume_ml"] for c in cases]
    return {"soft_dice_dV_ml": float(sum(sd) / len(sd)), "ce_dV_ml": 0.0,
            "soft_dice_p_hat": float(theory.optimal_p_hat_soft_dice(p, n_subregions, mu)),
            "soft_dice_bias_over_uncertain_volume": float(theory.volume_bias(p, n_subregions, mu) / mu),
            "ce_bias": float(theory.volume_bias(p, n_subregions, mu, loss="cross_entropy"))}


def _trainer_rows(comparison: dict, trainers: Sequence[str]) -> dict:
    """Per trainer: mean NLL, soft Dice score (the paper's 1 - SD, SD being the loss), Dice and volume errors."""
    rows = {}
    for tr in trainers:
        means = {m["metric"]: m["mean"] for m in comparison["model_means"]
                 if m["model"] == tr and m["class"] in ("1", "all")}
        bias = {b["metric"]: b for b in comparison["volume_bias"] if b["model"] == tr and b["class"] == "1"}
        rows[tr] = {"NLL": means.get("NLL"), "soft_dice_score": means["soft_Dice"], "Dice": means.get("Dice"),
                    "dV_soft": bias["dV_soft"], "dV": bias["dV"]}
    return rows


def run_demo(workdir: str | Path, p_values: Sequence[float] = (0.2, 0.8), n_subregions: int = 4, mu: float = 1.0,
             n_cases: int = 50, shape: Sequence[int] = (48, 48), radius: Sequence[float] = (5.0, 8.0),
             noise: float = 0.1, trainers: Sequence[str] = DEFAULT_TRAINERS, epochs: int = 10, iterations: int = 25,
             val_iterations: int = 2, fold: int = 0, device: str = "cpu", first_dataset_id: int = 801,
             seed: int = 0, n_boot: int = 10000, quiet: bool = False) -> dict:
    """Run the whole demo in ``workdir`` (created; must not exist yet) and return its results (also as JSON)."""
    from nnunet_losses.research import theory
    from nnunet_losses.evaluation import compare, evaluate
    from nnunet_losses.research.decision_claim import decision_claim
    from nnunet_losses.research.phantom import load_sidecar, write_phantom_dataset

    workdir = Path(workdir).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"{workdir} exists and is not empty; pass a new --workdir (the demo never "
                              f"overwrites anything)")
    folders, env, train_env = _environments(workdir, device, epochs, iterations, val_iterations)
    raw, pre, res, out = (folders[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "evaluation"))
    step = _Step(folders["logs"], quiet)
    started = time.time()
    results = {"settings": {"p": list(p_values), "n_subregions": n_subregions, "mu": mu, "n_cases": n_cases,
                            "shape": list(shape), "trainers": list(trainers), "epochs": epochs,
                            "iterations": iterations, "fold": fold, "device": device},
               "flip_threshold": theory.flip_threshold(n_subregions, mu), "experiments": []}
    for i, p in enumerate(p_values):
        dataset_id, name = first_dataset_id + i, f"PhantomP{int(round(p * 100)):02d}"
        write_phantom_dataset(raw, dataset_id, name=name, dim=2, p=p, n_subregions=n_subregions, mu=mu,
                              n_cases=n_cases, shape=shape, radius_range=radius, noise=noise, seed=seed + i)
        step.run(f"p = {p}: nnUNetv2_plan_and_preprocess -d {dataset_id} -c 2d",
                 [_bin("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "2d", "-npfp", "2", "-np", "2"],
                 env, f"plan_{dataset_id}.log")
        evaluations = []
        for tr in trainers:
            step.run(f"p = {p}: nnUNetv2_train {dataset_id} 2d {fold} -tr {tr} --npz ({epochs} x {iterations} it)",
                     [_bin("nnUNetv2_train"), str(dataset_id), "2d", str(fold), "-tr", tr, "-device", device, "--npz"],
                     train_env, f"train_{dataset_id}_{tr}.log")
            folder = next(res.glob(f"Dataset{dataset_id:03d}_*/{tr}__nnUNetPlans__2d"))
            references = pre / folder.parent.name / "gt_segmentations"  # what nnU-Net itself validates against
            evaluations.append(evaluate(folder, out / f"{name}_{tr}", reference_folder=references, folds=[fold],
                                        name=tr, progress=False))
        cmp = compare([e["output_folder"] for e in evaluations], out / f"{name}_comparison", names=list(trainers),
                      n_boot=n_boot)
        sidecar = load_sidecar(raw / f"Dataset{dataset_id:03d}_{name}")["cases"]
        results["experiments"].append({
            "p": p, "dataset_id": dataset_id, "comparison_folder": cmp["output_folder"], "n_cases": cmp["n_cases"],
            "volume_unit": cmp["volume_unit"], "theory": _theory_for(sidecar, cmp["cases"], p, n_subregions, mu),
            "trainers": _trainer_rows(cmp, trainers)})
        if set(DEFAULT_TRAINERS) <= set(trainers):  # Nordstrom's claim: CE + a decision rule vs soft Dice's argmax
            by_name = dict(zip(trainers, evaluations))
            results["experiments"][-1]["decision_claim"] = decision_claim(
                by_name["nnUNetTrainer_CEonly"], by_name["nnUNetTrainer_SoftDice"], n_boot=n_boot)
    results["wall_time_s"] = time.time() - started
    results["plot"] = str(plot_demo(results, workdir / "demo_volume_bias.png"))
    (workdir / "demo_results.json").write_text(json.dumps(results, indent=2, default=float))
    return results


def verdict(results: dict) -> List[str]:
    """Plain-language statements: did the experiment show what the theory predicts?"""
    lines = []
    for exp in results["experiments"]:
        p, flip = exp["p"], results["flip_threshold"]
        expected_sd = "over" if p > flip else "under"
        for tr, r in exp["trainers"].items():
            b = r["dV_soft"]
            seen = b["bias"] or "no significant"
            if "SoftDice" in tr:
                ok = b["bias"] == expected_sd
                lines.append(f"p = {p}: {tr} shows {seen} estimation of the volume (mean dV_soft {b['mean']:+.4f}, "
                             f"Holm p = {b['p_bootstrap_holm']:.3g}); theory predicts {expected_sd}-estimation "
                             f"-> {'REPRODUCED' if ok else 'NOT reproduced'}")
            else:
                sd = next((x["dV_soft"]["mean"] for t, x in exp["trainers"].items() if "SoftDice" in t), None)
                closer = sd is not None and abs(b["mean"]) < abs(sd)
                lines.append(f"p = {p}: {tr} mean dV_soft {b['mean']:+.4f} ({seen} bias, Holm p = "
                             f"{b['p_bootstrap_holm']:.3g}); theory predicts no bias -> "
                             f"{'closer to the true expected volume than soft Dice' if closer else 'NOT closer than soft Dice'}")
    return lines


def format_table(results: dict) -> str:
    """The paper's Table-1-style table: per p and trainer, NLL (CE), the soft Dice score (the paper's 1 - SD, SD being
    the soft Dice loss), dV (soft and hard) with significance, next to the theory's dV for the same cases (soft
    Dice: its optimal p_hat; CE: 0)."""
    lines = ["| p | trainer | CE (NLL) | 1 - SD (soft Dice score) | dV soft (95% CI) | p (Holm) | bias | dV hard | "
             "theory dV |",
             "|---|---|---|---|---|---|---|---|---|"]
    for exp in results["experiments"]:
        unit = exp["volume_unit"]
        for tr, r in exp["trainers"].items():
            b = r["dV_soft"]
            nll = "n/a" if r["NLL"] is None else f"{r['NLL']:.4f}"
            ci = f"[{b.get('ci_low', float('nan')):+.4f}, {b.get('ci_high', float('nan')):+.4f}]"
            th = exp["theory"]["soft_dice_dV_ml" if "SoftDice" in tr else "ce_dV_ml"]
            lines.append(f"| {exp['p']} | {tr} | {nll} | {r['soft_dice_score']:.4f} | {b['mean']:+.4f} {unit} {ci} | "
                         f"{b['p_bootstrap_holm']:.3g} | {b['bias'] or '-'} | {r['dV']['mean']:+.4f} {unit} | "
                         f"{th:+.4f} ml |")
    return "\n".join(lines)


def plot_demo(results: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = results["experiments"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    trainers = list(exps[0]["trainers"])
    width = 0.8 / len(trainers)
    for j, tr in enumerate(trainers):
        xs = [i + (j - (len(trainers) - 1) / 2) * width for i in range(len(exps))]
        means = [e["trainers"][tr]["dV_soft"]["mean"] for e in exps]
        lo = [m - e["trainers"][tr]["dV_soft"].get("ci_low", m) for m, e in zip(means, exps)]
        hi = [e["trainers"][tr]["dV_soft"].get("ci_high", m) - m for m, e in zip(means, exps)]
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=tr.replace("nnUNetTrainer_", ""))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(exps)), [f"p = {e['p']}" for e in exps])
    ax.set_ylabel("soft volume error dV = V(pred) - V(ref) [ml]")
    ax.set_title(f"Volume bias on phantoms with inherent uncertainty\n({PAPER_SHORT})", fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
