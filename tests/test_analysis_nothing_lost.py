"""Issue #18 (analysis): a barely-moving metric, bad flags, a failed report and an unusable metric lose nothing;
and the contracts other stages rely on (swuggy column, audio samples in reports)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from slmscale.analysis.params import ScalingParams
from slmscale.analysis.report import Report, build_report
from slmscale.analysis.schema import METRIC_COLUMNS
from slmscale.analysis.synthetic import synthetic_results
from slmscale.cli import main

TRUE = ScalingParams(1.8, 480.0, 2100.0, 0.35, 0.37)


def small_table(**metrics):
    return synthetic_results(TRUE, sizes=(1e7, 3e7, 1e8, 3e8), ratios=(2, 8, 32, 100), noise=0.004, seed=2, metrics=metrics)


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_downstream_versus_text_on_a_metric_at_chance_exits_0(tmp_path, capsys):
    """γ ≈ 1e-4 makes the multiplier 10^(0.066/1e-4) = 10^660, beyond float64: reported, not an OverflowError."""
    table = tmp_path / "results.csv"
    df = small_table()
    df["sblimp_macro"] = 0.5 * df["flops"] ** 1e-4
    df.to_csv(table, index=False)
    assert main(["downstream", "--results", str(table), "--metric", "sblimp_macro", "--versus", "text", "--json"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    out = json.loads(printed[-1])
    assert out["compute_multiplier"] is None  # inf, JSON-safe
    assert out["log10_compute_multiplier"] == pytest.approx(0.066 / out["gamma"])
    assert out["log10_compute_multiplier"] > 308
    assert any("(> 1e308×)" in line for line in printed)


@pytest.mark.parametrize("flag, value, needle", [
    ("--compute-factor", "-1", "--compute-factor: expected a finite compute factor > 1"),
    ("--compute-factor", "1", "--compute-factor: expected a finite compute factor > 1"),
    ("--ci", "1.5", "--ci: expected a confidence level in (0, 1)"),
])
def test_downstream_flags_are_validated(tmp_path, capsys, flag, value, needle):
    table = tmp_path / "results.csv"
    small_table(ssc=(0.3, 0.017)).to_csv(table, index=False)
    assert main(["downstream", "--results", str(table), "--metric", "ssc", "--versus", "text", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_downstream_on_a_table_of_scores_without_loss(tmp_path, capsys):
    df = small_table(tsc=(0.2, 0.025))
    compute_only = tmp_path / "released.csv"
    df[["flops", "tsc"]].rename(columns={"flops": "Training FLOP"}).to_csv(compute_only, index=False)
    assert main(["downstream", "--results", str(compute_only), "--flops-col", "Training FLOP", "--metric", "tsc",
                 "--json"]) == 0
    out = last_json(capsys)
    assert out["gamma"] == pytest.approx(0.025, abs=0.003) and out["n_runs"] == len(df)
    assert "versus_loss" not in out and "two_step" not in out
    sizes_only = tmp_path / "sizes.csv"
    df[["n_params", "tokens", "tsc"]].to_csv(sizes_only, index=False)  # C = 6 N D
    assert main(["downstream", "--results", str(sizes_only), "--metric", "tsc", "--json"]) == 0
    assert last_json(capsys)["gamma"] == pytest.approx(out["gamma"])


def test_two_step_prediction_through_the_loss(tmp_path, capsys):
    """A score that is linear in the loss is predicted better through the loss law than by Q = k·C^γ."""
    df = small_table()
    df["tsc"] = 1.0 - 0.1 * df["loss"]
    table = tmp_path / "results.csv"
    df.to_csv(table, index=False)
    assert main(["downstream", "--results", str(table), "--metric", "tsc", "--at-compute", "1e21", "--json"]) == 0
    two_step = last_json(capsys)["two_step"]
    assert two_step["slope"] == pytest.approx(-0.1, rel=1e-6)
    assert two_step["mape"] < two_step["direct_mape"]
    predicted = two_step["at_compute"]
    assert predicted["two_step"] == pytest.approx(1.0 - 0.1 * predicted["loss"], rel=1e-9)


def test_swuggy_is_a_metric_column_without_a_paper_gamma(tmp_path, capsys):
    assert "swuggy" in METRIC_COLUMNS
    table = tmp_path / "results.csv"
    small_table(swuggy=(0.4, 0.02)).to_csv(table, index=False)
    assert main(["downstream", "--results", str(table), "--metric", "swuggy", "--json"]) == 0
    assert "paper_gamma" not in last_json(capsys)
    assert main(["downstream", "--results", str(table), "--metric", "swuggy", "--versus", "text"]) == 2
    assert "not for metric 'swuggy'" in capsys.readouterr().err


def test_report_skips_unusable_metrics_with_a_note(tmp_path):
    df = small_table(swuggy=(0.4, 0.02))
    df["sblimp_macro"] = 0.5 * df["flops"] ** 1e-4  # sBLIMP at chance: multiplier 10^660
    df["tsc"] = 0.5  # constant
    df["ssc"] = np.nan  # never evaluated
    df.loc[0, "swuggy"] = 0.0  # a broken evaluation
    out = tmp_path / "report"
    summary = build_report(df, out, fit_config=_coarse(), n_boot=4, metrics=["sblimp_macro", "tsc", "ssc", "swuggy"])
    md = (out / "report.md").read_text()
    assert [r["metric"] for r in summary["downstream"]] == ["sblimp_macro"]
    assert "10^" in md and "(> 1e308×)" in md
    for metric, why in (("tsc", "is constant"), ("ssc", "has no numeric values"), ("swuggy", "must hold positive")):
        assert f"Skipped: `{metric}`" in md and why in md


def _coarse():
    from slmscale.analysis.fit import FitConfig

    return FitConfig(grid="coarse")


def test_report_has_the_trust_section(tmp_path):
    out = tmp_path / "report"
    summary = build_report(small_table(), out, fit_config=_coarse(), n_boot=4)
    md = (out / "report.md").read_text()
    assert "## Can this law be trusted?" in md and "Holdout extrapolation" in md and "1: loss envelope" in md
    assert summary["holdout"]["n"] == math.ceil(0.2 * 16) and 0 <= summary["holdout"]["coverage"] <= 1
    for png in ("holdout.png", "residuals.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and png in (out / "report.html").read_text()


def test_a_failed_report_leaves_the_old_one_untouched(tmp_path, monkeypatch):
    out = tmp_path / "report"
    build_report(small_table(tsc=(0.2, 0.025)), out, fit_config=_coarse(), n_boot=0, holdout_fraction=None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import slmscale.analysis.plots as plots

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "plot_downstream", broken)  # fails after the fit figures are drawn
    other = synthetic_results(ScalingParams(2.5, 100.0, 900.0, 0.3, 0.3), sizes=(1e6, 1e7, 1e8), ratios=(2, 20, 200),
                              metrics={"tsc": (0.2, 0.03)})
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(other, out, fit_config=_coarse(), n_boot=0, holdout_fraction=None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no half-built folder left behind


def test_report_refuses_to_replace_a_folder_of_other_files(tmp_path):
    from slmscale.errors import SlmscaleError

    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(SlmscaleError, match="holds files a report does not write"):
        build_report(small_table(), tmp_path, fit_config=_coarse(), n_boot=0, holdout_fraction=None)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_audio_samples_are_copied_and_played(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "story.wav").write_bytes(b"RIFF-one")
    (b / "story.wav").write_bytes(b"RIFF-two")  # same name, different sample
    rep = Report("t")
    assert rep.section("Samples").audio(a / "story.wav", "first") is rep.sections[0]
    rep.sections[0].audio(b / "story.wav", "second")
    md_path, html_path = rep.write(tmp_path / "out")
    copies = sorted((tmp_path / "out" / "samples").iterdir())
    assert sorted(p.read_bytes() for p in copies) == [b"RIFF-one", b"RIFF-two"]
    page = html_path.read_text()
    for p in copies:
        assert f"<audio controls preload='none' src='samples/{p.name}'>" in page
        assert f"(samples/{p.name})" in md_path.read_text()
    out = tmp_path / "report"
    build_report(small_table(), out, fit_config=_coarse(), n_boot=0, holdout_fraction=None,
                 samples=[(a / "story.wav", "a generated continuation")])
    md = (out / "report.md").read_text()
    assert "## Listen" in md and "a generated continuation" in md and len(list((out / "samples").iterdir())) == 1


def test_report_states_the_compute_a_wsd_sweep_spent():
    """Rows of a WSD sweep carry their own cooldown's FLOPs and their trunk's: each trunk counts once."""
    from slmscale.analysis.report import Report, compute_spent, trial_table_section

    n, trunk_tokens = 1e6, 8e5
    rows = [{"n_params": n, "tokens": d, "unique_tokens": d, "epochs": 1.0, "flops": 6 * n * d, "loss": 3.0,
             "trunk": "m-trunk-s0", "spent_flops": 6 * n * 0.2 * d, "trunk_flops": 6 * n * trunk_tokens}
            for d in (2e5, 4e5, 1e6)]
    df = pd.DataFrame(rows)
    assert compute_spent(df) == pytest.approx(6 * n * (0.2 * 1.6e6 + trunk_tokens))
    report = Report("t")
    trial_table_section(report, df)
    assert "Compute actually spent on these points: 6.720e+12" in report.to_markdown()
    cosine = df.assign(trunk=None, spent_flops=df["flops"], trunk_flops=0.0)
    assert compute_spent(cosine) == pytest.approx(df["flops"].sum())
    assert compute_spent(df.drop(columns=["spent_flops"])) is None
