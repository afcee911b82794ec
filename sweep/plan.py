"""`sweep plan`: expand a grid into trials with N, D, FLOPs and GPU-hours, before anything runs.

Two compute totals: `points_flops`, the sum of C = 6 N D over the grid points (what fits and budgets use, the
same for both schedules), and `total_flops`, what the sweep actually spends: with `schedule: wsd` each trunk
once plus each branch's cooldown."""
from __future__ import annotations

from dataclasses import dataclass

from slmscale.errors import SlmscaleError
from slmscale.sweep.grid import GridSpec, Trial, expand_grid, format_count

__all__ = ["Plan", "make_plan", "vocab_for"]


def vocab_for(spec: GridSpec, units: str | None) -> tuple[int, str]:
    """K (unit vocabulary) for parameter counts: the unit dataset's meta.json when it exists, else the grid's n_units."""
    from slmscale.tokenization.schema import meta_path, read_meta

    if units and meta_path(units).is_file():
        return read_meta(units).vocab_size, str(meta_path(units))
    return spec.n_units, f"{spec.source}: n_units"


def _param_counter(spec: GridSpec, n_units: int):
    from slmscale.models.ladder import LADDER, count_params

    unknown = [m for m in spec.models if m not in LADDER]
    if unknown:
        raise SlmscaleError(f"{spec.source}: field 'models' has unknown size(s) {unknown}, expected names from {list(LADDER)}")
    return lambda name: count_params(name, n_units)


@dataclass
class Plan:
    spec: GridSpec
    trials: list[Trial]
    n_units: int
    n_units_from: str

    @property
    def total_flops(self) -> float:
        """What the sweep will spend (a WSD trunk counted once, a branch for its cooldown only)."""
        return sum(t.spent_flops for t in self.trials)

    @property
    def points(self) -> list[Trial]:
        """The trials that give a results row: one per (N, D) grid point and seed/cap (not the WSD trunks)."""
        return [t for t in self.trials if t.is_point]

    @property
    def points_flops(self) -> float:
        """Sum of 6 N D over the points: what one full run per point (cosine) spends."""
        return sum(t.flops for t in self.points)

    def to_json(self) -> dict:
        return {"schedule": self.spec.schedule, "trials": self.rows(), "points": len(self.points),
                "total_flops": self.total_flops, "points_flops": self.points_flops,
                "gpu_hours": self.gpu_hours(self.total_flops)}

    def gpu_hours(self, flops: float) -> float:
        """GPU-hours at the assumed MFU on the assumed peak (ideal data parallelism: independent of GPU count)."""
        return flops / (self.spec.plan.mfu * self.spec.plan.gpu_peak_tflops * 1e12) / 3600.0

    def _res_label(self, model: str) -> str:
        r = self.spec.resources_for(model)
        return f"{r.workers} x {r.cpus_per_worker:g}/{r.gpus_per_worker:g}"

    def rows(self) -> list[dict]:
        return [
            dict(
                run_id=t.run_id, model=t.model, n_params=t.n_params, tokens=t.tokens, d_over_n=t.tokens / t.n_params,
                unique_tokens=t.unique_tokens or t.tokens, epochs=t.epochs, seed=t.seed, budget=t.budget,
                schedule=t.schedule, trunk=t.trunk, flops=t.flops, spent_flops=t.spent_flops,
                gpu_hours=self.gpu_hours(t.spent_flops), resources=self._res_label(t.model),
            )
            for t in self.trials
        ]

    def render(self) -> str:
        spec = self.spec
        head = (f"{'run_id':<28} {'N':>8} {'D':>8} {'D/N':>6} {'epochs':>6} {'FLOPs':>9} {'spent':>9} {'GPU-h':>9} "
                f"{'workers x CPU/GPU':>18}")
        trunks = len(self.trials) - len(self.points)
        lines = [
            f"grid {spec.name!r} from {spec.source}: {len(self.trials)} trials "
            f"({len(spec.models)} models, K={self.n_units} units from {self.n_units_from})"
            + (f": {len(self.points)} points as cooldown branches of {trunks} constant-LR trunk(s) (schedule wsd, "
               f"cooldown {spec.cooldown.fraction:g} {spec.cooldown.shape})" if spec.schedule == "wsd" else ""),
            head,
            "-" * len(head),
        ]
        for r in self.rows():
            lines.append(
                f"{r['run_id']:<28} {format_count(r['n_params']):>8} {format_count(r['tokens']):>8} {r['d_over_n']:>6.3g} "
                f"{r['epochs']:>6.3g} {r['flops']:>9.3g} {r['spent_flops']:>9.3g} {r['gpu_hours']:>9.3g} "
                f"{r['resources']:>18}"
            )
        total_h = self.gpu_hours(self.total_flops)
        lines += [
            "-" * len(head),
            f"total compute {self.total_flops:.4g} FLOPs spent for {len(self.points)} points (C = 6ND"
            + (f"; {self.points_flops / self.total_flops:.3g}x less than one cosine run per point, "
               f"{self.points_flops:.4g}" if spec.schedule == "wsd" else "") + f") = {total_h:.4g} GPU-hours at MFU "
            f"{spec.plan.mfu:.0%} of {spec.plan.gpu_peak_tflops:g} TFLOP/s",
            f"max_failures {spec.max_failures} per trial; evals {[e.benchmark for e in spec.eval] or 'none'}",
        ]
        gpus = {t.run_id: spec.resources_for(t.model).total_gpus for t in self.trials}
        if all(g > 0 for g in gpus.values()):
            # Wall clock if the cluster runs every trial at once (or max_concurrent at a time, roughly). A WSD
            # branch starts only once its trunk has trained up to the branch point: its chain is that much longer.
            def chain_h(t) -> float:
                own = self.gpu_hours(t.spent_flops) / gpus[t.run_id]
                return own + (self.gpu_hours(t.flops - t.spent_flops) / gpus[t.trunk] if t.trunk else 0.0)

            longest_h = max(chain_h(t) for t in self.trials)
            peak_gpus = sum(sorted(gpus.values(), reverse=True)[: spec.max_concurrent or len(self.trials)])
            bound = max(total_h / peak_gpus, longest_h)
            lines.append(
                f"wall-clock lower bound on {peak_gpus:g} GPUs: {bound:.3g} h (longest chain {longest_h:.3g} h"
                + (": a branch waits for its trunk to reach its branch point)" if spec.schedule == "wsd" else ")")
            )
        return "\n".join(lines)


def make_plan(spec: GridSpec, units: str | None = None) -> Plan:
    """Expand `spec` (with the unit dataset `units`, default the grid's) into a Plan."""
    units = units or spec.units
    n_units, source = vocab_for(spec, units)
    trials = expand_grid(spec, _param_counter(spec, n_units))
    return Plan(spec, trials, n_units, source)
