"""Figures and the Markdown/HTML report of a demo or evaluation run (matplotlib, offscreen)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from pathrt.runtime.explanation import Explanation
from pathrt.targets.spec import PathwaySpec


def _layer_grid(flat: torch.Tensor, spec: PathwaySpec) -> np.ndarray:
    """(K,) values → (L, max C_l) array, NaN where a layer has fewer channels."""
    grid = np.full((len(spec.layers), max(spec.channels)), np.nan)
    for row, part in enumerate(spec.split(flat[None])):
        grid[row, : part.shape[1]] = part[0].numpy()
    return grid


def plot_class_heatmaps(frequency: torch.Tensor, class_names: Sequence[str], spec: PathwaySpec, path: Path) -> Path:
    """Per-class neuron frequency f_c as layers × channels heat maps."""
    cols = min(2, len(class_names))  # two wide panels a row: one row per layer stays readable on a page
    rows = -(-len(class_names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 0.32 * len(spec.layers) * rows + 1.0 * rows + 0.8),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for c, name in enumerate(class_names):
        ax = axes.flat[c]
        ax.axis("on")
        image = ax.imshow(_layer_grid(frequency[c], spec), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                          interpolation="nearest")
        ax.set_title(f"class {name}", fontsize=11)
        ax.set_yticks(range(len(spec.layers)), [f"L{i + 1}" for i in range(len(spec.layers))], fontsize=9)
        if c >= len(class_names) - cols:  # the bottom row names the axis
            ax.set_xlabel("channel", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="neuron frequency f_c")
    fig.suptitle("Class pathways: how often each channel is kept (layers × channels)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sparsity_histogram(explanations: dict[str, Explanation], path: Path) -> Path:
    """Histogram of per-sample sparsity, one outlined series per method on shared bins (series that
    coincide stay visible); mean and std as the tables compute them (sample std, torch's default)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    values = {name: 100 * e.sparsity for name, e in explanations.items()}
    bins = np.linspace(float(min(v.min() for v in values.values())), float(max(v.max() for v in values.values()))
                       + 1e-6, 31)
    for i, (name, v) in enumerate(values.items()):
        std = float(v.std()) if len(v) > 1 else 0.0
        label = f"{name} (mean {float(v.mean()):.1f}%, std {std:.1f})"
        if bool(v.max() == v.min()):  # one sparsity for every image: a line, not a spike that flattens the other series
            ax.axvline(float(v[0]), color=f"C{i}", linestyle=("-", "--", ":", "-.")[i % 4], linewidth=2,
                       label=f"{label}, every image")
            continue
        ax.hist(v.numpy(), bins=bins, histtype="step", linewidth=2.2 - 0.5 * i, linestyle=("-", "--", ":", "-.")[i % 4],
                color=f"C{i}", label=label)
    ax.set_xlabel("sparsity of the pathway (% of neurons removed)")
    ax.set_ylabel("test images")
    ax.legend(fontsize=8)
    ax.set_title("Instance-specific sparsity", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_saliency(images: torch.Tensor, saliency: torch.Tensor, titles: Sequence[str], path: Path) -> Path:
    """Input images (N, 3, H, W) in [0, 1] above their pathway-gradient saliency maps (N, H, W)."""
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 3.8), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[1, i].imshow(saliency[i].numpy(), cmap="inferno")
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle("Pathway-gradient saliency ∂z_c(x; P)/∂x", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_transfer(results: dict[str, dict[str, float]], path: Path) -> Path:
    """Fidelity and mDC of the transfer conditions."""
    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    for ax, metric in zip(axes, ("fidelity", "mDC"), strict=True):
        ax.bar(names, [results[n][metric] for n in names], color=["tab:green", "tab:orange", "tab:gray"][: len(names)])
        ax.set_title(f"{metric} (%)", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Transfer of class pathways M_c", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-style Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown_to_html(markdown: str) -> str:
    """Renders the small Markdown subset the report uses: headings, tables, images, paragraphs."""
    out, table = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                table.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body) + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            out.append(f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}"></p>')
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>pathrt report</title><style>{style}</style>" \
           f"</head><body>{''.join(out)}</body></html>\n"


def write_report(folder: Path, markdown: str) -> tuple[Path, Path]:
    """Writes report.md and report.html (same content) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    md, page = folder / "report.md", folder / "report.html"
    md.write_text(markdown, encoding="utf-8")
    page.write_text(_markdown_to_html(markdown), encoding="utf-8")
    return md, page
