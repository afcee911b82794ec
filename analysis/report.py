"""A self-contained report of a scaling study: `report.md` + `report.html` with the PNG figures beside them.

`Report` is a small section builder (text, tables, figures) rendered to both Markdown and HTML; other
stages add their own sections (e.g. data statistics) with the same calls. `build_report` fills it from
any results table: trial table, fit with CIs, N_opt/D_opt at a few budgets next to the paper's presets,
downstream laws for the metric columns present, provenance last.
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_write_text, code_version, sha256_file

__all__ = ["Report", "Section", "build_report", "fmt"]


def fmt(x, digits: int = 4) -> str:
    """Numbers for humans: 3 significant digits for large/small magnitudes, plain otherwise."""
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    x = float(x)
    if math.isnan(x):
        return "–"  # missing (pandas turns None into NaN)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.{digits}g}"


@dataclass
class Section:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def text(self, markdown: str) -> Section:
        """A paragraph. Inline `code` and **bold** are rendered in HTML too."""
        self.blocks.append(("text", markdown))
        return self

    def table(self, rows: pd.DataFrame | Sequence[dict], columns: Sequence[str] | None = None) -> Section:
        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if columns is not None:
            df = df[list(columns)]
        self.blocks.append(("table", df))
        return self

    def image(self, path: str | Path, caption: str) -> Section:
        self.blocks.append(("image", (Path(path).name, caption)))
        return self

    def code(self, text: str) -> Section:
        self.blocks.append(("code", text))
        return self


def _inline_html(text: str) -> str:
    import re

    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


class Report:
    """Sections in order; `write(out_dir)` renders report.md and report.html (figures must be in out_dir)."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title, self.subtitle = title, subtitle
        self.sections: list[Section] = []

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""] + ([self.subtitle, ""] if self.subtitle else [])
        for sec in self.sections:
            lines += [f"## {sec.title}", ""]
            for kind, body in sec.blocks:
                if kind == "text":
                    lines += [body, ""]
                elif kind == "table":
                    cells = [[fmt(v) for v in row] for row in body.itertuples(index=False)]
                    lines += ["| " + " | ".join(map(str, body.columns)) + " |",
                              "|" + "|".join("---" for _ in body.columns) + "|"]
                    lines += ["| " + " | ".join(row) + " |" for row in cells] + [""]
                elif kind == "image":
                    name, caption = body
                    lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
                elif kind == "code":
                    lines += ["```", body, "```", ""]
        return "\n".join(lines)

    def to_html(self) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        if self.subtitle:
            parts.append(f"<p class='sub'>{_inline_html(self.subtitle)}</p>")
        toc = "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(self.sections))
        parts.append(f"<nav><ol>{toc}</ol></nav>")
        for i, sec in enumerate(self.sections):
            parts.append(f"<section id='s{i}'><h2>{html.escape(sec.title)}</h2>")
            for kind, body in sec.blocks:
                if kind == "text":
                    parts.append(f"<p>{_inline_html(body)}</p>")
                elif kind == "table":
                    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in body.columns)
                    rows = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                                   for row in body.itertuples(index=False))
                    parts.append(f"<div class='tw'><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")
                elif kind == "image":
                    name, caption = body
                    parts.append(f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
                                 f"<figcaption>{html.escape(caption)}</figcaption></figure>")
                elif kind == "code":
                    parts.append(f"<pre>{html.escape(body)}</pre>")
            parts.append("</section>")
        style = ("body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;"
                 "padding:0 1em;color:#222;line-height:1.5}h1{margin-bottom:.2em}.sub{color:#666}"
                 "h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}"
                 "table{border-collapse:collapse;font-size:.9em;font-variant-numeric:tabular-nums}"
                 "th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f5f5f5}"
                 ".tw{overflow-x:auto;max-height:28em}figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}"
                 "figcaption{color:#555;font-size:.9em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto}"
                 "code{background:#f3f3f3;padding:0 .2em}nav ol{columns:2}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        out_dir = Path(out_dir)
        md = atomic_write_text(out_dir / "report.md", self.to_markdown())
        page = atomic_write_text(out_dir / "report.html", self.to_html())
        return md, page


# ----------------------------------------------------------------------------------------------------------
# Section builders reused by `slmscale report` and the demo.

TRIAL_COLUMNS = ("run_id", "model", "n_params", "tokens", "unique_tokens", "epochs", "flops", "loss")


def trial_table_section(report: Report, df: pd.DataFrame, metrics: Sequence[str] = (), limit: int = 60) -> None:
    sec = report.section("Trials")
    cols = [c for c in TRIAL_COLUMNS if c in df.columns] + [m for m in metrics if m in df.columns]
    shown = df.sort_values(["n_params", "tokens"])[cols]
    sec.text(f"{len(df)} runs, {df['n_params'].nunique()} model sizes, compute {fmt(df['flops'].min())} – "
             f"{fmt(df['flops'].max())} FLOPs, loss {fmt(df['loss'].min())} – {fmt(df['loss'].max())}."
             + (f" Showing the first {limit} by (N, D)." if len(df) > limit else ""))
    sec.table(shown.head(limit))


def fit_section(report: Report, fit, boot=None, figures: Sequence[tuple[Path, str]] = ()) -> None:
    from slmscale.analysis.params import PRESETS

    sec = report.section(f"Parametric fit ({fit.config.form} form)")
    cfg = fit.config
    sec.text(f"Huber loss on log loss, δ = {cfg.delta:g}, log-sum-exp parametrisation; {fit.n_starts:,} initialisations "
             f"({cfg.grid} grid) optimised together by batched Levenberg–Marquardt, {fit.n_converged:,} converged, "
             f"best objective {fit.objective:.6g}; {fit.n_runs} runs"
             + (f", excluding the {len(fit.excluded_run_ids)} highest-loss run(s)" if fit.excluded_run_ids else "")
             + f"; {fit.seconds:.1f} s.")
    keys = ["E", "A", "B", "alpha", "beta"] + (["R_N_star", "R_D_star"] if fit.params.data_constrained else [])
    ci = boot.ci() if boot is not None else {}
    rows = []
    for k in keys:
        row = {"parameter": k, "fit": getattr(fit.params, k)}
        if boot is not None:
            row[f"{boot.level:.0%} CI low"], row[f"{boot.level:.0%} CI high"] = ci[k]
        for name in ("speech", "text", "epoch"):
            row[f"preset {name}"] = getattr(PRESETS[name], k, None)
        rows.append(row)
    sec.table(rows)
    if boot is not None:
        sec.text(f"Confidence intervals: percentile bootstrap over runs, {boot.n_boot} resamples, seed {boot.seed}.")
    for path, caption in figures:
        sec.image(path, caption)


def optimal_section(report: Report, params, budgets: Sequence[float], boot=None, presets=None,
                    figures: Sequence[tuple[Path, str]] = (), label: str = "fit") -> None:
    from slmscale.analysis.optimal import compute_optimal

    sec = report.section("Compute-optimal allocation")
    sec.text("C = 6·N·D; N_opt and D_opt from the closed form of Hoffmann et al. (Appendix D) for each parameter set.")
    if not params.has_optimum:
        sec.text(f"**This fit has no compute-optimal allocation** ({params.why_no_optimum()}); only the presets are shown.")
    rows = []
    for c in budgets:
        entries = [(label, params)] + list((presets or {}).items())
        for name, p in entries:
            if not p.has_optimum:
                rows.append({"compute": c, "params": name, "N_opt": None, "D_opt": None, "D/N": None, "loss": None})
                continue
            a = compute_optimal(c, p)
            row = {"compute": c, "params": name, "N_opt": a.N_opt, "D_opt": a.D_opt, "D/N": a.D_opt / a.N_opt, "loss": a.loss}
            if boot is not None and name == label:
                ci = boot.optimal_ci(c)
                row["N_opt CI"] = f"{fmt(ci['N_opt'][0])} – {fmt(ci['N_opt'][1])}"
                row["D_opt CI"] = f"{fmt(ci['D_opt'][0])} – {fmt(ci['D_opt'][1])}"
            rows.append(row)
    table = pd.DataFrame(rows)
    for col in ("N_opt CI", "D_opt CI"):
        if col in table:
            table[col] = table[col].fillna("")
    sec.table(table)
    for path, caption in figures:
        sec.image(path, caption)


def downstream_section(report: Report, results: Sequence[dict], figures: Sequence[tuple[Path, str]] = ()) -> None:
    sec = report.section("Downstream laws")
    rows = []
    for r in results:
        rows.append({
            "metric": r["metric"], "gamma": r["gamma"], "gamma CI": f"{fmt(r['ci']['gamma'][0])} – {fmt(r['ci']['gamma'][1])}",
            "k": r["k"], "R²": r["r2"], "runs": r["n_runs"],
            "slope vs loss": r.get("versus_loss", {}).get("slope"),
            "paper γ speech": r.get("paper_gamma", {}).get("speech"), "paper γ text": r.get("paper_gamma", {}).get("text"),
            "compute multiplier vs text": r.get("compute_multiplier"),
        })
    sec.text("Q = k·C^γ fitted by least squares in log-log space; the compute multiplier is how much more compute "
             "these models need for the score gain text LMs (Pythia, paper Table 4) get from 10× more compute.")
    sec.table(rows)
    for path, caption in figures:
        sec.image(path, caption)


def provenance_section(report: Report, inputs: dict[str, Path | str], extra: dict | None = None,
                       df: pd.DataFrame | None = None) -> None:
    sec = report.section("Provenance")
    rows = []
    for name, path in inputs.items():
        p = Path(path)
        rows.append({"input": name, "path": str(p), "sha256": sha256_file(p)[:16] if p.is_file() else "–"})
    sec.table(rows)
    info = {"code_version": code_version(), **(extra or {})}
    if df is not None:
        for col in ("tokenizer", "tokenizer_hash", "units_meta_hash", "code_version", "seed"):
            if col in df.columns:
                values = sorted({str(v) for v in df[col].dropna()})
                info[f"table {col}"] = values[:5] + (["…"] if len(values) > 5 else [])
    sec.code(json.dumps(info, indent=2, default=str))


# ----------------------------------------------------------------------------------------------------------


def build_report(df: pd.DataFrame, out_dir: str | Path, *, results_path: str | Path | None = None, fit_config=None,
                 n_boot: int = 0, seed: int = 0, level: float = 0.95, budgets: Sequence[float] | None = None,
                 metrics: Sequence[str] | None = None, title: str = "Scaling study report",
                 report: Report | None = None, progress: bool = False) -> dict:
    """Fit, bootstrap, plot and write the report for a results table (canonical columns). Returns a summary dict."""
    from slmscale.analysis.bootstrap import bootstrap_fit
    from slmscale.analysis.downstream import GAMMA_TABLE4, downstream_analysis, metric_family
    from slmscale.analysis.fit import FitConfig, fit_scaling_law
    from slmscale.analysis.params import PRESETS
    from slmscale.analysis.plots import plot_downstream, plot_isoflops, plot_loss_vs_tokens, plot_optimal_vs_compute
    from slmscale.analysis.schema import METRIC_COLUMNS

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = fit_config or FitConfig()
    source = str(results_path or "results")
    fit = fit_scaling_law(df, config, source=source, progress=progress)
    boot = bootstrap_fit(df, fit, n_boot, seed, level, source=source, progress=progress) if n_boot else None
    report = report or Report(title, f"Generated by `{code_version()}` from `{source}`.")
    used = df[~df["run_id"].astype(str).isin(fit.excluded_run_ids)] if "run_id" in df else df

    trial_table_section(report, df, metrics or [m for m in METRIC_COLUMNS if m in df.columns])
    figs = [(plot_loss_vs_tokens(used, fit.params, out_dir / "loss_vs_tokens.png"),
             "Loss vs training tokens, one colour per model size; lines are the fitted L(N, D)."),
            (plot_isoflops(used, fit.params, out_dir / "isoflops.png"),
             "IsoFLOP profiles: runs grouped by compute budget, fitted loss along each budget, ★ at its minimum.")]
    fit_section(report, fit, boot, figs)

    lo, hi = float(df["flops"].min()), float(df["flops"].max())
    budgets = [float(b) for b in budgets] if budgets else sorted({10.0 ** round(math.log10(x)) for x in (lo, math.sqrt(lo * hi), hi, hi * 100)})
    presets = {k: PRESETS[k] for k in ("speech", "text", "epoch")}
    opt_fig = plot_optimal_vs_compute(fit.params, out_dir / "optimal_vs_compute.png",
                                      compute_range=(min(budgets + [lo]) / 3, max(budgets + [hi]) * 3),
                                      bootstrap=boot, presets=presets, observed=used, level=level)
    optimal_section(report, fit.params, budgets, boot, presets,
                    [(opt_fig, "Compute-optimal N and D vs compute: this fit (band: bootstrap CI) and published presets.")])

    metric_cols = [m for m in (metrics or METRIC_COLUMNS) if m in df.columns and pd.to_numeric(df[m], errors="coerce").notna().sum() >= 3]
    downstream = []
    if metric_cols:
        from slmscale.analysis.downstream import fit_power_law, metric_rows

        figs = []
        for m in metric_cols:
            try:
                r = downstream_analysis(df, m, versus="text" if metric_family(m) else None, level=level, source=source)
            except SlmscaleError:  # gamma <= 0: the law is still worth showing, the multiplier does not exist
                r = downstream_analysis(df, m, versus=None, level=level, source=source)
            downstream.append(r)
            rows = metric_rows(df, m, source)
            law = fit_power_law(rows["flops"], rows[m], level)
            refs = GAMMA_TABLE4.get(metric_family(m) or "", {})
            figs.append((plot_downstream(rows["flops"], rows[m], law, out_dir / f"downstream_{m}.png", m, level, refs),
                         f"{m} vs compute with the fitted power law; dashed: slopes of paper Table 4."))
        downstream_section(report, downstream, figs)

    inputs = {"results table": results_path} if results_path else {}
    provenance_section(report, inputs, {"fit": {k: v for k, v in fit.to_dict().items() if k != "excluded_run_ids"},
                                        "bootstrap": {"n": n_boot, "seed": seed, "level": level} if n_boot else None}, df)
    md, page = report.write(out_dir)
    return {"report_md": str(md), "report_html": str(page), "fit": fit.to_dict(),
            "ci": boot.ci() if boot else None, "downstream": downstream,
            "figures": sorted(p.name for p in out_dir.glob("*.png"))}
