"""slmscale analysis: results-table schema, scaling-law fits, compute-optimal allocation, downstream laws,
plots and reports. Imports none of the other stages (no Ray, no audio): `pip install` and fit any table."""
