"""The Ray Train path: a 2-worker TorchTrainer (DDP over gloo) on local Ray trains the same model as the
in-process loop (same global batch, gradients averaged over workers) and writes the same RUN_DIR."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from slmscale.models.synthetic_units import write_pattern_units
from slmscale.models.train import TrainConfig, train

pytestmark = pytest.mark.ray


# ~35 s on the shared 2-core dev machine (load ~8), almost all of it Ray Train worker-group start-up; kept in
# the default suite because it is the only default test of the real multi-worker path.
def test_two_worker_torch_trainer_matches_in_process(ray_local, tmp_path):
    units = write_pattern_units(tmp_path / "u", n_units=40, n_utterances=300, seed=7)
    base = dict(units_dir=str(units), model="tiny-100K", tokens=512 * 6, lr=2e-3, checkpoint_every=3, report_every=1,
                threads=1, progress=False, cpus_per_worker=0.5)
    single = train(TrainConfig(out_dir=str(tmp_path / "one"), **base))
    double = train(TrainConfig(out_dir=str(tmp_path / "two"), workers=2, **base))

    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    # Same maths, different float summation order (two half-batch means averaged by DDP): equal up to
    # rounding. (Adam can turn rounding noise on a near-zero gradient into an lr-sized step, hence atol.)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-3)
    assert double["tokens"] == single["tokens"] == 512 * 6
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-4)
    lines = [json.loads(ln) for ln in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]  # rank 0 writes each report once
    ref = [json.loads(ln) for ln in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [m["train_loss"] for m in lines] == pytest.approx([m["train_loss"] for m in ref], rel=1e-5)
    assert lines[0]["train_loss"] > lines[-1]["train_loss"]  # and it trains
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    run = json.loads((tmp_path / "two" / "config.json").read_text())
    assert run["workers"] == 2


def test_report_relay_and_error_unwrapping():
    """The driver-side pieces of the Ray path without starting Ray: rank 0's metrics reach `report` with the
    checkpoint path, and a worker's SlmscaleError surfaces as one (wrapped the way Train v2 wraps it)."""
    from slmscale.errors import SlmscaleError
    from slmscale.models.ray_train import ReportRelay, _find_cause

    got = []
    relay = ReportRelay(lambda m, c: got.append((m["step"], c)))
    relay.after_report(None, [{"step": 4, "checkpoint_dir": "/r/checkpoints/step-0000004"}, {"step": 4}], None)
    assert got == [(4, "/r/checkpoints/step-0000004")]

    class TrainingFailed(Exception):
        def __init__(self, failures):
            super().__init__("worker group failed")
            self.worker_failures = failures

    inner = SlmscaleError("units: bad")
    try:
        try:
            raise inner
        except SlmscaleError as e:
            raise RuntimeError("in worker") from e
    except RuntimeError as wrapped:
        assert _find_cause(TrainingFailed({0: wrapped})) is inner
    plain = ValueError("x")
    assert _find_cause(plain) is plain


@pytest.mark.slow  # Tune trial + Train worker group start-up: over a minute on a loaded 2-core machine
def test_tune_trial_receives_worker_reports(ray_local, tmp_path):
    """A Tune function trainable calling train(workers=2) sees the workers' reports (TuneReportCallback is
    added automatically inside a Tune session) and the trial's last result is the run's last report."""
    from ray import tune

    units = write_pattern_units(tmp_path / "u", n_units=40, n_utterances=300, seed=7)

    def trainable(config):
        train(TrainConfig(units_dir=str(units), model="tiny-100K", out_dir=str(tmp_path / "run"), tokens=512 * 4,
                          checkpoint_every=2, workers=2, cpus_per_worker=0.5, threads=1, progress=False))

    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 0.5}),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="t"))
    result = tuner.fit().get_best_result(metric="step", mode="max")
    assert result.error is None
    assert result.metrics["step"] == 4 and result.metrics["tokens"] == 512 * 4
    assert result.metrics["checkpoint_dir"].endswith("step-0000004")
