"""`slmscale fit | optimal | downstream | report` through slmscale.cli.main: JSON shapes, errors, files written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from slmscale.analysis.params import PRESETS, ScalingParams
from slmscale.analysis.synthetic import synthetic_results
from slmscale.cli import main

TRUE = ScalingParams(1.8, 480.0, 2100.0, 0.35, 0.37)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    df = synthetic_results(TRUE, sizes=(1e7, 1e8, 1e9), ratios=(2, 8, 20, 64), noise=0.004, seed=5,
                           metrics={"sblimp_macro": (0.2, 0.021), "ssc": (0.3, 0.017)})
    path = tmp_path_factory.mktemp("tables") / "results.parquet"
    df.to_parquet(path, index=False)
    return path


def last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_fit_json_with_bootstrap_and_plots(table, tmp_path, capsys):
    rc = main(["fit", "--results", str(table), "--grid", "coarse", "--bootstrap", "6", "--plot-dir", str(tmp_path), "--json"])
    assert rc == 0
    out = last_json(capsys)
    assert {"E", "A", "B", "alpha", "beta", "ci"} <= out.keys()
    assert set(out["ci"]) == {"E", "A", "B", "alpha", "beta"} and out["ci"]["alpha"][0] < out["ci"]["alpha"][1]
    assert out["alpha"] == pytest.approx(0.35, abs=0.03)
    for name in ("loss_vs_tokens.png", "isoflops.png", "optimal_vs_compute.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_fit_other_peoples_columns(chinchilla_csv, capsys):
    """--n-col/--flops-col read Epoch's CSV (no D column: D = C / 6N)."""
    rc = main(["fit", "--results", str(chinchilla_csv), "--n-col", "Model Size", "--flops-col", "Training FLOP",
               "--exclude-highest-loss", "5", "--grid", "coarse", "--json"])
    assert rc == 0
    out = last_json(capsys)
    assert out["E"] == pytest.approx(1.817, abs=3e-3) and out["n_runs"] == 240


def test_data_constrained_fit_json(tmp_path, capsys):
    true = ScalingParams(1.8, 480.0, 2100.0, 0.35, 0.37, R_N_star=5.0, R_D_star=15.0)
    df = synthetic_results(true, sizes=(1e7, 1e8, 1e9), ratios=(5, 100), epochs=(1, 4, 16, 64), noise=0.002, seed=6)
    path = tmp_path / "dc.csv"
    df.to_csv(path, index=False)
    assert main(["fit", "--results", str(path), "--form", "data-constrained", "--grid", "coarse", "--json"]) == 0
    out = last_json(capsys)
    assert {"E", "A", "B", "alpha", "beta", "R_N_star", "R_D_star"} <= out.keys()


def test_optimal_json_preset_and_params_file(tmp_path, capsys):
    assert main(["optimal", "--compute", "1e21", "--preset", "epoch", "--json"]) == 0
    out = last_json(capsys)
    assert {"N_opt", "D_opt", "loss"} <= out.keys()
    assert 6 * out["N_opt"] * out["D_opt"] == pytest.approx(1e21)
    params = tmp_path / "p.json"
    params.write_text(json.dumps(PRESETS["speech"].to_dict()))
    assert main(["optimal", "--compute", "1e21", "--params", str(params), "--unique-tokens", "1e9", "--json"]) == 0
    capped = last_json(capsys)
    assert capped["D_opt"] > 1e9 and capped["method"].startswith("numeric")


def test_downstream_json(table, tmp_path, capsys):
    rc = main(["downstream", "--results", str(table), "--metric", "sblimp_macro", "--versus", "text",
               "--plot-dir", str(tmp_path), "--json"])
    assert rc == 0
    out = last_json(capsys)
    assert {"gamma", "k", "ci", "compute_multiplier"} <= out.keys()
    assert out["gamma"] == pytest.approx(0.021, abs=0.004)
    assert (tmp_path / "downstream_sblimp_macro.png").exists()


def test_report_writes_markdown_html_and_figures(table, tmp_path, capsys):
    out_dir = tmp_path / "report"
    assert main(["report", "--results", str(table), "-o", str(out_dir), "--grid", "coarse", "--bootstrap", "5"]) == 0
    md = (out_dir / "report.md").read_text()
    html = (out_dir / "report.html").read_text()
    for heading in ("## Trials", "## Parametric fit", "## Compute-optimal allocation", "## Downstream laws", "## Provenance"):
        assert heading in md
    assert "preset speech" in md and "code_version" in md and "sha256" in md
    for png in ("loss_vs_tokens.png", "isoflops.png", "optimal_vs_compute.png", "downstream_sblimp_macro.png", "downstream_ssc.png"):
        assert (out_dir / png).exists() and png in html


@pytest.mark.parametrize(
    "argv_tail, mutate, needle",
    [
        (["--loss-col", "val"], None, "missing column 'val'"),
        ([], lambda df: df.assign(loss=df["loss"].where(df.index != 1, np.nan)), "column 'loss'"),
        ([], lambda df: df.assign(tokens=df["tokens"].where(df.index != 0, -5.0)), "column 'tokens'"),
        ([], lambda df: df.head(3), "expected at least 5 runs"),
    ],
)
def test_fit_bad_input_exits_2_with_one_line(tmp_path, capsys, argv_tail, mutate, needle):
    df = synthetic_results(TRUE, sizes=(1e7, 1e8), ratios=(2, 20, 100))
    if mutate:
        df = mutate(df)
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    rc = main(["fit", "--results", str(path), "--grid", "coarse", "--json"] + argv_tail)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_optimal_params_missing_keys_exits_2(tmp_path, capsys):
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"E": 1.7, "A": 400}))
    assert main(["optimal", "--compute", "1e21", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing key(s) ['B', 'alpha', 'beta']" in err and len(err.splitlines()) == 1


def test_help_at_every_level(capsys):
    for cmd in ("fit", "optimal", "downstream", "report"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "--n-col" in capsys.readouterr().out
