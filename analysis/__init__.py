"""slmscale analysis: results-table schema, scaling-law fits, compute-optimal allocation, downstream laws,
plots and reports. Imports none of the other stages (no Ray, no audio): `pip install` and fit any table."""


def demo_report(out_dir, **kwargs):
    """The analysis stage's `make demo` (see analysis/demo.py)."""
    from slmscale.analysis.demo import demo_report as _demo

    return _demo(out_dir, **kwargs)
