"""Grid spec parsing, validation errors naming the field, expansion into trials, and `sweep plan`."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slmscale.errors import SlmscaleError
from slmscale.models.ladder import count_params
from slmscale.sweep.grid import grid_from_dict, load_grid
from slmscale.sweep.plan import make_plan

REPO = Path(__file__).resolve().parent.parent
BASE = {"name": "g", "models": ["tiny-100K", "tiny-1M"], "d_over_n": [2, 20], "seeds": [0, 1]}


def spec(**changes):
    raw = {**BASE, **changes}
    return grid_from_dict({k: v for k, v in raw.items() if v is not ...}, source="g.yaml")


def test_expand_d_over_n_counts_and_compute():
    plan = make_plan(spec())
    assert len(plan.trials) == 2 * 2 * 2
    n = count_params("tiny-1M", 500)
    t = next(t for t in plan.trials if t.model == "tiny-1M" and t.budget == "d_over_n=20" and t.seed == 1)
    assert t.n_params == n and t.tokens == 20 * n
    assert t.flops == pytest.approx(6 * n * 20 * n)
    assert plan.total_flops == pytest.approx(sum(6 * t.n_params * t.tokens for t in plan.trials))
    assert len({t.run_id for t in plan.trials}) == len(plan.trials)
    # sorted by compute, so the plan reads small to large
    assert [t.flops for t in plan.trials] == sorted(t.flops for t in plan.trials)


def test_lrs_train_every_point_at_each_peak_lr(tmp_path):
    """`lrs`: each point once per LR (ids end in -lr<value>), with WSD one trunk per LR whose branches carry its LR;
    the trial's TrainConfig gets it; refused beside train.lr or below train.min_lr."""
    from slmscale.sweep.trainable import train_config_for

    cosine = make_plan(spec(lrs=[1e-3, 4e-3]))
    assert len(cosine.trials) == 2 * 2 * 2 * 2 and {t.lr for t in cosine.trials} == {1e-3, 4e-3}
    assert {t.run_id for t in cosine.trials} >= {"tiny-100K-D278k-s0-lr0.001", "tiny-100K-D278k-s0-lr0.004"}
    wsd = make_plan(spec(lrs=[1e-3, 4e-3], schedule="wsd", seeds=[0], d_over_n=[20, 40]))
    trunks = {t.run_id: t for t in wsd.trials if not t.is_point}
    assert sorted(trunks) == ["tiny-100K-trunk-s0-lr0.001", "tiny-100K-trunk-s0-lr0.004",
                              "tiny-1M-trunk-s0-lr0.001", "tiny-1M-trunk-s0-lr0.004"]
    assert all(trunks[p.trunk].lr == p.lr and p.run_id.endswith(f"-lr{p.lr:g}") for p in wsd.points)
    settings = {"units": str(tmp_path), "resources": {m: {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}
                                                      for m in BASE["models"]}, "train": {"min_lr": 1e-5}}
    point = next(t for t in cosine.trials if t.lr == 4e-3)
    assert train_config_for(point.to_dict(), settings, tmp_path / "r").lr == 4e-3
    assert make_plan(spec()).trials[0].lr is None and "-lr" not in make_plan(spec()).trials[0].run_id
    with pytest.raises(SlmscaleError, match="not both"):
        spec(lrs=[1e-3], train={"lr": 2e-3})
    with pytest.raises(SlmscaleError, match="below the final LR"):
        spec(lrs=[1e-5, 1e-3])


def test_isoflop_budgets_give_d_equal_c_over_6n():
    plan = make_plan(spec(d_over_n=..., flops=["1e12", 3e12]))
    for t in plan.trials:
        c = float(t.budget.split("=")[1])
        assert t.tokens == round(c / (6 * t.n_params))
        assert t.flops == pytest.approx(c, rel=1e-5)


def test_unique_token_caps_make_multi_epoch_runs_and_drop_duplicates():
    n = count_params("tiny-100K", 500)
    plan = make_plan(spec(models=["tiny-100K"], d_over_n=[2, 20], seeds=[0], unique_tokens=[None, 5 * n]))
    # cap 5N >= 2N: that run is single epoch and equals the uncapped one -> 3 trials, not 4
    assert len(plan.trials) == 3
    capped = [t for t in plan.trials if t.unique_tokens]
    assert len(capped) == 1 and capped[0].epochs == pytest.approx(4.0, rel=1e-3)
    assert "-U" in capped[0].run_id


def test_gpu_hours_follow_mfu_and_peak():
    plan = make_plan(spec(plan={"mfu": 0.5, "gpu_peak_tflops": 100}))
    c = plan.trials[0].flops
    assert plan.gpu_hours(c) == pytest.approx(c / (0.5 * 100e12) / 3600)
    text = plan.render()
    assert "total compute" in text and "GPU-hours at MFU 50%" in text
    assert all(t.run_id in text for t in plan.trials)


def test_vocab_from_units_meta(tmp_path):
    from slmscale.tokenization.schema import UnitsMeta, write_meta

    write_meta(tmp_path, UnitsMeta(vocab_size=50, tokenizer={"kind": "mfcc", "hash": "abc"}))
    plan = make_plan(spec(), units=str(tmp_path))
    assert plan.n_units == 50
    assert plan.trials[0].n_params == count_params(plan.trials[0].model, 50)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"models": []}, "models"),
        ({"models": ["tiny-100K", "nope"]}, "nope"),
        ({"d_over_n": ...}, "d_over_n"),  # no budget at all
        ({"tokens": [1000]}, "exactly one"),  # two budgets
        ({"d_over_n": [2, "x"]}, "d_over_n[1]"),
        ({"d_over_n": [-2]}, "d_over_n[0]"),
        ({"seeds": [0.5]}, "seeds[0]"),
        ({"resources": {"gpus": 1}}, "resources"),
        ({"resources": {"workers": 0}}, "resources.workers"),
        ({"plan": {"mfu": 1.5}}, "plan.mfu"),
        ({"train": {"seed": 3}}, "train"),
        ({"modles": ["x"]}, "modles"),
        ({"model_resources": {"tiny-6M": {"workers": 2}}}, "model_resources"),
        ({"name": "has space"}, "name"),
        ({"max_failures": -1}, "max_failures"),
    ],
)
def test_invalid_specs_name_the_field(changes, field):
    with pytest.raises(SlmscaleError) as err:
        make_plan(spec(**changes))
    assert field in str(err.value) and "g.yaml" in str(err.value)


def test_load_grid_resolves_relative_units_and_reports_bad_yaml(tmp_path):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({**BASE, "units": "units"}))
    assert load_grid(tmp_path / "g.yaml").units == str((tmp_path / "units").resolve())
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(SlmscaleError, match="bad.yaml: not valid YAML"):
        load_grid(tmp_path / "bad.yaml")
    with pytest.raises(SlmscaleError, match="grid spec not found"):
        load_grid(tmp_path / "missing.yaml")


def test_shipped_grids_are_valid():
    paper = make_plan(load_grid(REPO / "sweep" / "grids" / "paper.yaml"))
    assert {t.model for t in paper.trials} == {"20M", "85M", "155M", "309M", "823M"}
    assert len(paper.trials) == 5 * 8
    ratios = sorted({round(t.tokens / t.n_params) for t in paper.trials})
    assert ratios == [2, 4, 8, 10, 20, 32, 64, 100]
    longest = max(paper.trials, key=lambda t: t.tokens)
    assert longest.model == "823M" and 82e9 < longest.tokens < 83e9  # paper's 82B-token run
    tiny = make_plan(load_grid(REPO / "sweep" / "grids" / "tiny.yaml"))
    assert len(tiny.trials) == 9 and len({t.model for t in tiny.trials}) == 3
    assert all(load_grid(REPO / "sweep" / "grids" / "tiny.yaml").resources_for(m).gpus_per_worker == 0 for m in tiny.spec.models)


def test_plan_cli_prints_every_trial(capsys):
    from slmscale.cli import main

    assert main(["sweep", "plan", str(REPO / "sweep" / "grids" / "paper.yaml")]) == 0
    out = capsys.readouterr().out
    assert "40 trials" in out and "823M-D82.3B-s0" in out and "GPU-hours" in out
    assert main(["sweep", "plan", str(REPO / "nope.yaml")]) == 2
    assert "grid spec not found" in capsys.readouterr().err


def test_token_counts_accept_suffixes_and_exponents():
    n = count_params("tiny-100K", 500)
    plan = make_plan(spec(d_over_n=..., tokens=["410M", 4.1e8 * 2, "1.5e9", "82.3B"], unique_tokens=[None, "100M"],
                          seeds=[0]))
    assert sorted({t.tokens for t in plan.trials}) == [410_000_000, 820_000_000, 1_500_000_000, 82_300_000_000]
    assert {t.unique_tokens for t in plan.trials} == {None, 100_000_000}
    assert "tiny-100K-D410M-U100M-s0" in {t.run_id for t in plan.trials}
    isoflop = make_plan(spec(models=["tiny-100K"], d_over_n=..., flops=["2T"], seeds=[0]))
    assert [t.tokens for t in isoflop.trials] == [round(2e12 / (6 * n))]
    with pytest.raises(SlmscaleError, match=r"g.yaml: field 'tokens\[1\]': expected a number like 410M.*'12Q'"):
        spec(d_over_n=..., tokens=["410M", "12Q"])
    with pytest.raises(SlmscaleError, match=r"g.yaml: field 'tokens\[0\]': expected a whole number, got 1.5"):
        spec(d_over_n=..., tokens=["1.5"])


def test_every_error_is_named_and_a_typo_comes_first():
    with pytest.raises(SlmscaleError) as err:
        grid_from_dict({"name": "g", "modles": ["tiny-1M"], "d_over_n": [2], "seeds": [0, -1]}, source="g.yaml")
    text = str(err.value)
    assert text.startswith("g.yaml: field 'modles': unknown field, expected some of [")
    assert "missing field 'models'" in text and "field 'seeds[1]': expected a non-negative whole number, got -1" in text
    with pytest.raises(SlmscaleError, match=r"field 'eval\[1\]\.units': expected a path, got 3"):
        spec(eval=["embedded:sblimp", {"benchmark": "b", "units": 3}])
    with pytest.raises(SlmscaleError, match=r"g.yaml: expected a YAML mapping at the top level, got list"):
        grid_from_dict([1], source="g.yaml")


def test_spec_round_trips_through_its_dict(tmp_path):
    """sweep.json records spec.to_dict(); `sweep resume` rebuilds the same spec from it."""
    from slmscale.sweep.grid import with_changes

    original = spec(eval=["embedded:sblimp", {"benchmark": "/b", "units": "/u"}], unique_tokens=[None, "1M"],
                    model_resources={"tiny-1M": {"workers": 2}}, train={"lr": 1e-3}, max_concurrent=2)
    raw = original.to_dict()
    assert raw["eval"] == [{"benchmark": "embedded:sblimp"}, {"benchmark": "/b", "units": "/u"}]
    assert raw["model_resources"] == {"tiny-1M": {"workers": 2, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0}}
    again = grid_from_dict(yaml.safe_load(yaml.safe_dump(raw)), source="sweep.json")
    assert again.to_dict() == raw and again.source == "sweep.json"
    assert [t.run_id for t in make_plan(again).trials] == [t.run_id for t in make_plan(original).trials]
    changed = with_changes(original, units="/units", max_concurrent=None)
    assert changed.units == "/units" and changed.max_concurrent is None and changed.source == "g.yaml"
    assert original.units is None  # specs are immutable
    with pytest.raises(SlmscaleError, match="g.yaml: field 'units': expected a path"):
        with_changes(original, units=5)
