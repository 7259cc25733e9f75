"""The report of `evaluate_robustness`: its results as markdown tables, JSON and figures in a folder. The only
module of `evaluation/` that draws (through `hf_adautomix.plots`)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

__all__ = ["results_markdown", "write_report"]

logger = logging.getLogger(__name__)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _clean(c: dict[str, float]) -> list[str]:
    return [
        "",
        "## Clean",
        "",
        "| top-1 (%) | top-5 (%) | NLL | ECE (%, 15 bins) |",
        "|---|---|---|---|",
        f"| {_pct(c['accuracy'])} | {_pct(c['top5_accuracy'])} | {c['nll']:.4f} | {_pct(c['ece'])} |",
    ]


def _corruptions(r: dict[str, Any]) -> list[str]:
    sev = list(r["severity_mean_error"])
    lines = ["", f"## Corruptions ({r['params']} parameters): top-1 error (%)", ""]
    lines += ["| corruption | " + " | ".join(f"s{s}" for s in sev) + " | mean |"]
    lines += ["|---" * (len(sev) + 2) + "|"]
    for name, errs in r["error"].items():
        row = " | ".join(_pct(errs[s]) for s in sev)
        lines.append(f"| {name} | {row} | {_pct(r['type_mean_error'][name])} |")
    row = " | ".join(_pct(r["severity_mean_error"][s]) for s in sev)
    lines.append(f"| **mean** | {row} | **{_pct(r['mean_error'])}** |")
    return [*lines, "", f"Mean corruption accuracy: {_pct(r['mean_accuracy'])} %."]


def _fgsm(f: dict[str, float]) -> list[str]:
    return ["", "## FGSM (white box)", "", "| epsilon | error (%) |", "|---|---|"] + [
        f"| {f['epsilon'] * 255:.3g}/255 | {_pct(f['error'])} |"
    ]


def _occlusion(o: dict[str, Any]) -> list[str]:
    ratios = list(o["accuracy"])
    return [
        "",
        f"## Occlusion ({o['patch_size']} px patches, fill {o['fill']}): top-1 accuracy (%)",
        "",
        "| " + " | ".join(f"{float(r):.0%}" for r in ratios) + " |",
        "|---" * len(ratios) + "|",
        "| " + " | ".join(_pct(o["accuracy"][r]) for r in ratios) + " |",
    ]


def results_markdown(results: dict[str, Any]) -> str:
    """The results of `evaluate_robustness` as markdown tables (percentages)."""
    lines = [f"# Robustness of {results.get('model', 'the model')}", ""]
    lines.append(f"{results.get('num_samples', '?')} evaluation images.")
    sections = (("clean", _clean), ("corruptions", _corruptions), ("fgsm", _fgsm), ("occlusion", _occlusion))
    for key, section in sections:
        if key in results:
            lines += section(results[key])
    return "\n".join(lines) + "\n"


def write_report(
    results: dict[str, Any], logits: np.ndarray, labels: np.ndarray, output_dir: str
) -> dict[str, str]:
    """Writes `robustness.json`, `robustness.md`, `reliability_diagram.png` (of the clean `logits`) and, when
    `results` has them, `occlusion.png` and `corruptions.png` to `output_dir`.

    Sets `results["files"]` (name -> path, also in the JSON) and returns it.
    """
    from .. import plots

    os.makedirs(output_dir, exist_ok=True)
    files = {
        "json": os.path.join(output_dir, "robustness.json"),
        "markdown": os.path.join(output_dir, "robustness.md"),
    }
    files["reliability_diagram"] = plots.save_reliability_diagram(
        logits, labels, os.path.join(output_dir, "reliability_diagram.png"), n_bins=15
    )
    if "occlusion" in results:
        occ = results["occlusion"]
        files["occlusion_plot"] = plots.save_occlusion_plot(
            {results["model"]: occ["accuracy"]},
            os.path.join(output_dir, "occlusion.png"),
            title=f"Random PatchDrop ({occ['patch_size']} px)",
        )
    if "corruptions" in results:
        files["corruption_plot"] = plots.save_corruption_plot(
            results["corruptions"], os.path.join(output_dir, "corruptions.png")
        )
    results["files"] = files
    with open(files["json"], "w") as f:
        json.dump(results, f, indent=2)
    with open(files["markdown"], "w") as f:
        f.write(results_markdown(results))
    logger.info("Wrote %s and %s.", files["json"], files["markdown"])
    return files
