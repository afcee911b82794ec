"""A self-contained report of a scaling study: `report.md` + `report.html` with the PNG figures beside them.

`Report` is a small section builder (text, tables, figures) rendered to both Markdown and HTML; other
stages add their own sections (e.g. data statistics) with the same calls. `build_report` fills it from
any results table: trial table, fit with CIs, N_opt/D_opt at a few budgets next to the paper's presets,
downstream laws for the metric columns present, provenance last.
"""
from __future__ import annotations

import contextlib
import html
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_folder, atomic_path, atomic_write_text, code_version, sha256_file

__all__ = ["Report", "Section", "build_report", "fmt"]

SAMPLES_DIR = "samples"  # audio samples, relative to the report folder


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
        """A figure; `Report.write` copies it next to the report when it lives elsewhere."""
        self.blocks.append(("image", (Path(path), caption)))
        return self

    def audio(self, path: str | Path, caption: str) -> Section:
        """An audio sample: copied into `samples/` of the report folder by `Report.write` and rendered as an
        HTML `<audio controls>` player (in Markdown, a link to the file). The copy's name carries a hash of
        the file's bytes, so samples with the same name from different folders do not overwrite each other."""
        path = Path(path)
        if not path.is_file():
            raise SlmscaleError(f"audio sample {path}: file not found; expected an audio file to put in the report")
        name = f"{path.stem}-{sha256_file(path)[:10]}{path.suffix}"
        self.blocks.append(("audio", (path, f"{SAMPLES_DIR}/{name}", caption)))
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
                    path, caption = body
                    lines += [f"![{caption}]({path.name})", "", f"*{caption}*", ""]
                elif kind == "audio":
                    _, href, caption = body
                    lines += [f"[▶ {caption}]({href})", ""]
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
                    path, caption = body
                    parts.append(f"<figure><img src='{html.escape(path.name)}' alt='{html.escape(caption)}'>"
                                 f"<figcaption>{html.escape(caption)}</figcaption></figure>")
                elif kind == "audio":
                    _, href, caption = body
                    parts.append(f"<figure><audio controls preload='none' src='{html.escape(href)}'></audio>"
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
        """Write report.md and report.html into out_dir, first copying figures and audio samples that live
        elsewhere next to them (figures beside the report, samples into samples/)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for sec in self.sections:
            for kind, body in sec.blocks:
                if kind == "image":
                    _copy_into(body[0], out_dir / body[0].name)
                elif kind == "audio":
                    _copy_into(body[0], out_dir / body[1])
        md = atomic_write_text(out_dir / "report.md", self.to_markdown())
        page = atomic_write_text(out_dir / "report.html", self.to_html())
        return md, page


def _copy_into(source: Path, target: Path) -> None:
    """Copy a figure or sample to where the report refers to it (nothing to do when it is already there)."""
    if target.exists() and source.exists() and source.resolve() == target.resolve():
        return
    if not source.is_file():
        if target.is_file():
            return  # written into the report folder directly
        raise SlmscaleError(f"report: figure or sample {source} not found; expected the file the section refers to")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, suffix=target.suffix) as tmp:
        shutil.copyfile(source, tmp)


# A report folder holds only what a report writes: these names, figures and audio. Anything else means -o
# points at a folder the user keeps other things in, which replacing the folder whole would destroy.
REPORT_FILES = {"report.md", "report.html"}
REPORT_SUFFIXES = {".png", ".svg", ".jpg", ".wav", ".flac", ".mp3", ".ogg"}


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise SlmscaleError(f"-o {out_dir}: exists and is not a folder; expected a new or an earlier report folder")
    foreign = sorted(p.name for p in out_dir.iterdir()
                     if not (p.name in REPORT_FILES or (p.is_dir() and p.name == SAMPLES_DIR)
                             or (p.is_file() and p.suffix.lower() in REPORT_SUFFIXES)))
    if foreign:
        raise SlmscaleError(f"-o {out_dir}: the folder holds files a report does not write ({foreign[:5]}); the report "
                            "replaces its folder whole, so expected a new folder or an earlier report folder")


@contextlib.contextmanager
def staged_folder(out_dir: str | Path) -> Iterator[Path]:
    """Build a report in a fresh sibling folder and swap it in for `out_dir` whole when the block succeeds
    (`slmscale.io.atomic_folder`): a failed report never leaves new figures beside old text. Refuses a folder
    holding files a report does not write, since the swap would delete them."""
    _check_replaceable(Path(out_dir))
    with atomic_folder(out_dir) as staging:
        yield staging


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
    spent = compute_spent(df)
    if spent is not None and spent < float(df["flops"].sum()):  # a WSD sweep: branches share their trunks
        sec.text(f"Compute actually spent on these points: {fmt(spent)} FLOPs (each WSD trunk counted once), against "
                 f"{fmt(float(df['flops'].sum()))} for Σ 6ND of the points ({float(df['flops'].sum()) / spent:.3g}× "
                 f"more would have been spent with one run per point).")
    sec.table(shown.head(limit))


def generated_samples(folder: str | Path) -> list[tuple[Path, str]]:
    """(WAV, caption) of each sample in a `slmscale generate` output folder, read from its samples.json (the prompt's
    resynthesis first), for a report's "Listen" section. Refuses a folder without samples.json or without WAVs
    (generated with no --vocoder)."""
    folder = Path(folder)
    meta_file = folder / "samples.json"
    if not meta_file.is_file():
        raise SlmscaleError(f"--samples {folder}: no samples.json, expected an output folder of `slmscale generate`")
    try:
        meta = json.loads(meta_file.read_text())
        prov, settings = meta["provenance"], meta["settings"]
        prompt_wav, samples = meta["prompt"].get("wav"), meta["samples"]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise SlmscaleError(f"{meta_file}: not a samples.json of `slmscale generate` ({exc!r})") from None
    if not prompt_wav or not all(s.get("wav") for s in samples):
        raise SlmscaleError(f"--samples {folder}: the samples have no WAV files, expected `slmscale generate` run with "
                            f"--vocoder")
    who = f"{prov.get('run_id')} ({prov.get('model')}, step {prov.get('step')})"
    how = f"temperature {settings.get('temperature')}, top-k {settings.get('top_k') or 'off'}, seed {settings.get('seed')}"
    out = [(folder / prompt_wav, f"{who}: the prompt, resynthesised from its units by {settings.get('vocoder')}")]
    for s in samples:
        start = s.get("continuation_starts_s")
        at = f" (continuation from {start:.2f} s)" if isinstance(start, (int, float)) else ""
        out.append((folder / s["wav"], f"{who}: sample {s.get('index')}{at}, {how}"))
    missing = [str(p) for p, _ in out if not p.is_file()]
    if missing:
        raise SlmscaleError(f"--samples {folder}: {missing[0]} is listed in samples.json but missing")
    return out


def compute_spent(df: pd.DataFrame) -> float | None:
    """What a sweep really spent on the rows of `df` when they say so (sweep results' `spent_flops`, and
    `trunk_flops` repeated on every branch of one `trunk`): each point's own run plus each distinct trunk once.
    None for tables without those columns."""
    if "spent_flops" not in df.columns:
        return None
    spent = float(pd.to_numeric(df["spent_flops"], errors="coerce").fillna(0).sum())
    if {"trunk", "trunk_flops"} <= set(df.columns):
        trunks = df.dropna(subset=["trunk"]).drop_duplicates("trunk")
        spent += float(pd.to_numeric(trunks["trunk_flops"], errors="coerce").fillna(0).sum())
    return spent


def fit_section(report: Report, fit, boot=None, figures: Sequence[tuple[Path, str]] = ()) -> None:
    from slmscale.analysis.params import PRESETS

    sec = report.section(f"Parametric fit ({fit.config.form} form)")
    cfg = fit.config
    sec.text(f"Huber loss on log loss, δ = {cfg.delta:g}, log-sum-exp parametrisation; {fit.n_starts:,} initialisations "
             f"({cfg.grid} grid) optimised together by batched Levenberg–Marquardt, {fit.n_converged:,} converged, "
             f"best objective {fit.objective:.6g}; {fit.n_runs} runs"
             + (f", excluding the {len(fit.excluded_run_ids)} highest-loss run(s)" if fit.excluded_run_ids else "")
             + (f"; each point at its best peak LR ({len(fit.other_lr_run_ids)} run(s) at other LRs left out)"
                if fit.other_lr_run_ids else "")
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


def downstream_section(report: Report, results: Sequence[dict], figures: Sequence[tuple[Path, str]] = (),
                       skipped: Sequence[str] = ()) -> None:
    from slmscale.analysis.downstream import format_multiplier

    sec = report.section("Downstream laws")
    rows = []
    for r in results:
        log10_m = r.get("log10_compute_multiplier")
        two_step = r.get("two_step", {})
        rows.append({
            "metric": r["metric"], "gamma": r["gamma"], "gamma CI": f"{fmt(r['ci']['gamma'][0])} – {fmt(r['ci']['gamma'][1])}",
            "k": r["k"], "R²": r["r2"], "runs": r["n_runs"],
            "slope vs loss": r.get("versus_loss", {}).get("slope"),
            "MAPE direct %": two_step.get("direct_mape"), "MAPE via loss %": two_step.get("mape"),
            "paper γ speech": r.get("paper_gamma", {}).get("speech"), "paper γ text": r.get("paper_gamma", {}).get("text"),
            "compute multiplier vs text": format_multiplier(log10_m) if log10_m is not None else None,
        })
    sec.text("Q = k·C^γ fitted by least squares in log-log space; the compute multiplier is how much more compute "
             "these models need for the score gain text LMs (Pythia, paper Table 4) get from 10× more compute. "
             "MAPE direct / via loss: in-sample errors of Q = k·C^γ and of the two-step prediction (loss from the "
             "fitted L(N, D), then the score from its linear fit against loss).")
    if rows:
        sec.table(rows)
    for note in skipped:
        sec.text(f"Skipped: {note}")
    for path, caption in figures:
        sec.image(path, caption)


def trust_section(report: Report, holdout=None, approach_rows: Sequence[dict] = (), at_compute: float | None = None,
                  warnings: Sequence[str] = (), trends: dict | None = None, notes: Sequence[str] = (),
                  figures: Sequence[tuple[Path, str]] = ()) -> None:
    """"Can this law be trusted?": holdout extrapolation, the approaches side by side, diagnostics."""
    sec = report.section("Can this law be trusted?")
    if holdout is not None:
        h = holdout.summary()
        sec.text(f"**Holdout extrapolation.** The law was refitted without the {h['held_out']} ({h['n']} runs, compute "
                 f"≥ {fmt(h['min_heldout_compute'])}; {h['n_train']} training runs up to {fmt(h['max_train_compute'])}) "
                 f"and predicted them: MAPE {h['mape']:.2f} %, max {h['max_ape']:.2f} %, bias {h['bias']:+.2f} % "
                 f"(+ = over-predicted); {h['coverage']:.0%} of the measured losses fall inside the {h['level']:.0%} "
                 f"prediction intervals (bootstrap over training runs, {h['n_boot']} resamples, plus residual noise).")
        structure = h["structure"]
        rows = []
        if "leave_one_budget_out" in structure:
            s_ = structure["leave_one_budget_out"]
            rows.append({"check": f"leave one budget out ({len(s_['folds'])} folds)", "runs": sum(f["n"] for f in s_["folds"]),
                         "MAPE %": s_["mape"], "max APE %": s_["max_ape"], "bias %": s_["bias"]})
        if "leave_largest_size_out" in structure:
            s_ = structure["leave_largest_size_out"]
            rows.append({"check": f"leave the largest size out (N ≈ {fmt(s_['n_params'])})", "runs": s_["n"],
                         "MAPE %": s_["mape"], "max APE %": s_["max_ape"], "bias %": s_["bias"]})
        if rows:
            sec.table(rows)
    if approach_rows:
        sec.text(f"**Approaches.** The allocation N_opt ∝ C^a, D_opt ∝ C^b by each approach, and N_opt, D_opt at "
                 f"C = {fmt(at_compute)} FLOPs; `disagrees` names approaches whose intervals of a or N_opt do not overlap.")
        sec.table([{"approach": r["approach"], "a": r["a"], "a CI": _interval(r["a_ci"]), "b": r["b"],
                    "b CI": _interval(r["b_ci"]), "N_opt": r["N_opt"], "N_opt CI": _interval(r["N_opt_ci"]),
                    "D_opt": r["D_opt"], "D_opt CI": _interval(r["D_opt_ci"]),
                    "disagrees": ", ".join(r["disagrees"]) or "–"} for r in approach_rows])
    for note in notes:
        sec.text(note)
    if trends:
        sec.text(f"**Residuals** (log L − log L̂): RMS {trends['rms']:.4f}; slope per e-fold against log N "
                 f"{trends['slope_vs_log_n']:+.4f}, log D {trends['slope_vs_log_d']:+.4f}, log C {trends['slope_vs_log_c']:+.4f} "
                 "(a clear trend means the form misses something along that axis).")
    if warnings:
        sec.text("**Warnings about the design:** " + " · ".join(warnings))
    else:
        sec.text("**Design:** no warnings (enough sizes, token counts and budgets; N and D not collinear).")
    for path, caption in figures:
        sec.image(path, caption)


def _interval(ci: Sequence[float]) -> str:
    lo, hi = ci
    return "–" if not (np.isfinite(lo) and np.isfinite(hi)) else f"{fmt(lo)} – {fmt(hi)}"


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
                 report: Report | None = None, progress: bool = False, holdout_fraction: float | None = 0.2,
                 samples: Sequence[tuple[str | Path, str]] = ()) -> dict:
    """Fit, bootstrap, plot and write the report for a results table (canonical columns). Returns a summary dict.

    The report is built in a sibling folder and swapped in for `out_dir` whole (`staged_folder`): a failure
    leaves an earlier report there untouched. `samples` are (audio file, caption) pairs for a "Listen"
    section; `holdout_fraction` (None = no holdout) is the share of highest-compute runs held out in
    "Can this law be trusted?".
    """
    from slmscale.analysis.downstream import check_level

    check_level(level)
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        summary = _build_into(df, staging, results_path=results_path, fit_config=fit_config, n_boot=n_boot, seed=seed,
                              level=level, budgets=budgets, metrics=metrics, title=title, report=report,
                              progress=progress, holdout_fraction=holdout_fraction, samples=samples)
    summary.update(report_md=str(out_dir / "report.md"), report_html=str(out_dir / "report.html"),
                   figures=sorted(p.name for p in out_dir.glob("*.png")))
    return summary


def _build_into(df: pd.DataFrame, out_dir: Path, *, results_path, fit_config, n_boot, seed, level, budgets, metrics,
                title, report, progress, holdout_fraction, samples) -> dict:
    from slmscale.analysis.bootstrap import bootstrap_fit
    from slmscale.analysis.downstream import GAMMA_TABLE4, downstream_analysis, metric_family
    from slmscale.analysis.fit import FitConfig, fit_scaling_law
    from slmscale.analysis.params import PRESETS
    from slmscale.analysis.plots import plot_downstream, plot_isoflops, plot_loss_vs_tokens, plot_optimal_vs_compute
    from slmscale.analysis.schema import METRIC_COLUMNS

    config = fit_config or FitConfig()
    source = str(results_path or "results")
    fit = fit_scaling_law(df, config, source=source, progress=progress)
    boot = bootstrap_fit(df, fit, n_boot, seed, level, source=source, progress=progress) if n_boot else None
    report = report or Report(title, f"Generated by `{code_version()}` from `{source}`.")
    left_out = fit.excluded_run_ids + fit.other_lr_run_ids
    used = df[~df["run_id"].astype(str).isin(left_out)] if "run_id" in df else df

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

    trust = _trust(report, df, fit, boot, config, out_dir, level=level, seed=seed, source=source,
                   at_compute=max(budgets), holdout_fraction=holdout_fraction, progress=progress)

    # Every metric column present (or asked for) is tried; one that cannot be fitted (all NaN, constant,
    # non-positive, γ ≤ 0 for the multiplier) is skipped with a note instead of aborting the report.
    wanted = list(metrics) if metrics else [m for m in METRIC_COLUMNS if m in df.columns]
    downstream, figs, skipped = [], [], []
    for m in wanted:
        try:
            try:
                r = downstream_analysis(df, m, versus="text" if metric_family(m) else None, level=level, source=source,
                                        loss_params=fit.params)
            except SlmscaleError as exc:
                if "compute multiplier" not in str(exc):
                    raise
                # γ ≤ 0: the law is still worth showing, the multiplier does not exist
                r = downstream_analysis(df, m, versus=None, level=level, source=source, loss_params=fit.params)
            from slmscale.analysis.downstream import fit_power_law, metric_rows

            rows = metric_rows(df, m, source)
            law = fit_power_law(rows["flops"], rows[m], level)
        except SlmscaleError as exc:
            skipped.append(f"`{m}`: {exc}")
            continue
        downstream.append(r)
        refs = GAMMA_TABLE4.get(metric_family(m) or "", {})
        figs.append((plot_downstream(rows["flops"], rows[m], law, out_dir / f"downstream_{m}.png", m, level, refs),
                     f"{m} vs compute with the fitted power law; dashed: slopes of paper Table 4."))
    if downstream or skipped:
        downstream_section(report, downstream, figs, skipped)

    if samples:
        sec = report.section("Listen")
        for path, caption in samples:
            sec.audio(path, caption)

    inputs = {"results table": results_path} if results_path else {}
    provenance_section(report, inputs, {"fit": {k: v for k, v in fit.to_dict().items() if k not in ("excluded_run_ids", "other_lr_run_ids")},
                                        "bootstrap": {"n": n_boot, "seed": seed, "level": level} if n_boot else None}, df)
    report.write(out_dir)
    return {"fit": fit.to_dict(), "ci": boot.ci() if boot else None, "downstream": downstream,
            "skipped_metrics": skipped, **trust}


def _trust(report: Report, df: pd.DataFrame, fit, boot, config, out_dir: Path, *, level: float, seed: int, source: str,
           at_compute: float, holdout_fraction: float | None, progress: bool) -> dict:
    """The "Can this law be trusted?" section; returns its numbers for the summary. Each check that the
    table cannot support (too few runs to hold any out, no isoFLOP budgets, …) is replaced by a note."""
    from slmscale.analysis.approaches import approach1, approach2, approach3, compare_approaches
    from slmscale.analysis.diagnostics import design_warnings, residual_frame, residual_trends
    from slmscale.analysis.holdout import HoldoutSpec, holdout_evaluation, used_runs
    from slmscale.analysis.plots import plot_holdout, plot_residuals

    used = used_runs(df, config)
    notes, figures, out = [], [], {}
    holdout = None
    if holdout_fraction:
        try:
            holdout = holdout_evaluation(df, config, HoldoutSpec(fraction=holdout_fraction), n_boot=max(boot.n_boot if boot else 0, 50),
                                         seed=seed, level=level, source=source, progress=progress, full_fit=fit)
        except SlmscaleError as exc:
            notes.append(f"No holdout extrapolation: {exc}")
    if holdout is not None:
        figures.append((plot_holdout(holdout, out_dir / "holdout.png"),
                        "Predicted vs measured loss: held-out runs (highest compute) with prediction intervals; "
                        "grey: training runs."))
        out["holdout"] = {k: v for k, v in holdout.summary().items() if k != "runs"}
    laws = []
    for build in (lambda: approach1(used, seed=seed), lambda: approach2(used, seed=seed),
                  lambda: approach3(fit.params, boot, n_runs=fit.n_runs)):
        try:
            laws.append(build())
        except SlmscaleError as exc:
            notes.append(f"Not available here — {exc}.")
    rows = compare_approaches(laws, at_compute, level) if laws else []
    out["approaches"] = rows
    frame = residual_frame(used, fit.params)
    trends = residual_trends(frame)
    figures.append((plot_residuals(frame, out_dir / "residuals.png"),
                    "Residuals of the fitted law against N, D and C, for the runs it was fitted to."))
    warnings = design_warnings(used, boot.ci() if boot else None, fit.params, level)
    out["diagnostics"] = {"warnings": warnings, "residuals": trends}
    trust_section(report, holdout, rows, at_compute, warnings, trends, notes, figures)
    return out
