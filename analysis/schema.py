"""The results table: the contract between `sweep/` (which writes it) and `analysis/` (which fits it).

One row per completed training run. Canonical columns are typed below; any further numeric column is a
metric (e.g. `sblimp_macro`, `ssc`, `tsc`) and is kept as float64. Files are CSV or Parquet, chosen by
extension. Other people's tables can be read by mapping their column names (`ColumnMap`); where a table
has N and compute C but no D, D = C / (6 N).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_path

__all__ = [
    "RESULTS_SCHEMA",
    "CANONICAL_COLUMNS",
    "PROVENANCE_COLUMNS",
    "METRIC_COLUMNS",
    "ColumnMap",
    "read_results",
    "read_score_table",
    "write_results",
    "validate_results",
]

# Canonical columns and their Arrow types. n_params counts the tied embedding once (paper Table 1).
RESULTS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("n_params", pa.float64()),  # float: other people's tables may give 6.8e9
        pa.field("tokens", pa.float64()),  # D, training tokens seen
        pa.field("unique_tokens", pa.float64()),  # U_D; equals tokens for single-epoch runs
        pa.field("epochs", pa.float64()),  # tokens / unique_tokens
        pa.field("flops", pa.float64()),  # C = 6 N D
        pa.field("loss", pa.float64()),  # held-out test loss (nats/token)
    ]
)
CANONICAL_COLUMNS = tuple(RESULTS_SCHEMA.names)

# Provenance written by the sweep with every row (strings unless noted). Optional for foreign tables.
PROVENANCE_COLUMNS = (
    "tokenizer",  # tokenizer id, e.g. "mfcc" or "hubert:<dir>"
    "tokenizer_hash",
    "units_meta_hash",  # sha256 of the unit dataset's meta.json
    "model_config",  # JSON of the model config
    "seed",  # int
    "lr",  # float: the peak learning rate (several per point when a grid sweeps `lrs`; fits take the best)
    "code_version",
    "flops_exact",  # float: 6N + attention term, per token, times tokens
    "tokens_per_s",  # float
    "mfu",  # float in [0, 1]
    "val_loss",  # float
)

# Downstream metric columns written by evaluation (accuracies in [0, 1]). swuggy is sWUGGY lexical accuracy
# (ZeroSpeech 2021); the paper's Table 4 has no γ for it.
METRIC_COLUMNS = ("sblimp_macro", "sblimp_pair", "ssc", "tsc", "swuggy")


@dataclass(frozen=True)
class ColumnMap:
    """Which columns of a user's table hold N, D, loss and compute. D may be absent if flops is given."""

    n: str = "n_params"
    d: str = "tokens"
    loss: str = "loss"
    flops: str = "flops"


def _read_any(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise SlmscaleError(f"results table not found: {path}")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as exc:  # pyarrow / pandas parse errors
        raise SlmscaleError(f"could not read results table {path}: {exc}") from None
    raise SlmscaleError(f"results table {path}: expected a .csv, .tsv or .parquet file, got '{suffix or 'no extension'}'")


def read_results(
    path: str | Path,
    columns: ColumnMap = ColumnMap(),
    require_loss: bool = True,
) -> pd.DataFrame:
    """Read a results table and return it with canonical column names.

    The user's N/D/loss/flops columns are renamed to `n_params/tokens/loss/flops`; D is derived as
    C / (6 N) when only compute is present; flops as 6 N D when only D is present; `unique_tokens`
    defaults to `tokens` and `epochs` to tokens / unique_tokens. The result is validated.
    """
    path = Path(path)
    df = _read_any(path)
    rename = {}
    for canon, user in (("n_params", columns.n), ("tokens", columns.d), ("loss", columns.loss), ("flops", columns.flops)):
        if user != canon and user not in df.columns:
            # A column the user named explicitly must exist; silently using the canonical one would fit the wrong data.
            raise SlmscaleError(f"{path}: missing column '{user}' (given for {canon}). Columns: {list(df.columns)}")
        if user != canon and user in df.columns:
            if canon in df.columns:
                df = df.drop(columns=[canon])
            rename[user] = canon
    df = df.rename(columns=rename)
    if "n_params" not in df.columns:
        raise SlmscaleError(f"{path}: missing column '{columns.n}' (model size N); pass --n-col to name it. Columns: {list(df.columns)}")
    if "tokens" not in df.columns:
        if "flops" not in df.columns:
            raise SlmscaleError(
                f"{path}: missing column '{columns.d}' (training tokens D) and no compute column '{columns.flops}' "
                f"to derive it from (D = C / 6N); pass --d-col or --flops-col. Columns: {list(df.columns)}"
            )
        df["tokens"] = pd.to_numeric(df["flops"], errors="coerce") / (6.0 * pd.to_numeric(df["n_params"], errors="coerce"))
    if "flops" not in df.columns:
        df["flops"] = 6.0 * pd.to_numeric(df["n_params"], errors="coerce") * pd.to_numeric(df["tokens"], errors="coerce")
    if require_loss and "loss" not in df.columns:
        raise SlmscaleError(f"{path}: missing column '{columns.loss}' (loss); pass --loss-col to name it. Columns: {list(df.columns)}")
    if "run_id" not in df.columns:
        df["run_id"] = [f"row{i}" for i in range(len(df))]
    if "model" not in df.columns:
        df["model"] = [f"{n:.3g}" for n in pd.to_numeric(df["n_params"], errors="coerce")]
    if "unique_tokens" not in df.columns:
        df["unique_tokens"] = df["tokens"]
    else:
        df["unique_tokens"] = pd.to_numeric(df["unique_tokens"], errors="coerce").fillna(df["tokens"])
    if "epochs" not in df.columns:
        df["epochs"] = pd.to_numeric(df["tokens"], errors="coerce") / pd.to_numeric(df["unique_tokens"], errors="coerce")
    validate_results(df, source=str(path), require_loss=require_loss)
    return df


def read_score_table(path: str | Path, columns: ColumnMap = ColumnMap()) -> pd.DataFrame:
    """Read a table of downstream scores: it needs training compute (a compute column, or N and D) and
    metric columns; N, D and loss are optional (a released table of scores often has only compute).

    Returns canonical names (`flops`, and `n_params`/`tokens`/`loss` where present). If every run has N,
    D and loss the table is read exactly as `read_results` reads it.
    """
    path = Path(path)
    df = _read_any(path)
    if columns.n in df.columns and (columns.d in df.columns or columns.flops in df.columns) and columns.loss in df.columns:
        return read_results(path, columns, require_loss=True)
    has_size = columns.n in df.columns and (columns.d in df.columns or columns.flops in df.columns)
    if has_size:
        return read_results(path, columns, require_loss=False)
    if columns.flops not in df.columns:
        raise SlmscaleError(
            f"{path}: missing column '{columns.flops}' (training compute C) and no model size / tokens columns "
            f"('{columns.n}', '{columns.d}') to derive it from; pass --flops-col, or --n-col and --d-col. "
            f"Columns: {list(df.columns)}"
        )
    rename = {user: canon for canon, user in (("flops", columns.flops), ("loss", columns.loss)) if user in df.columns}
    df = df.drop(columns=[c for c in rename.values() if c in df.columns and c not in rename]).rename(columns=rename)
    compute = pd.to_numeric(df["flops"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(compute) | (compute <= 0)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise SlmscaleError(f"{path}: column '{columns.flops}' must hold finite positive FLOP counts; rows {rows} do not")
    df["flops"] = compute
    if "run_id" not in df.columns:
        df["run_id"] = [f"row{i}" for i in range(len(df))]
    return df


def validate_results(df: pd.DataFrame, source: str = "results", require_loss: bool = True) -> None:
    """Raise SlmscaleError naming the column and rows when a canonical value is missing/NaN/non-positive."""
    needed = ["n_params", "tokens"] + (["loss"] if require_loss else [])
    for col in needed:
        if col not in df.columns:
            raise SlmscaleError(f"{source}: missing column '{col}'")
        values = pd.to_numeric(df[col], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float)) | (values.to_numpy(dtype=float) <= 0)
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise SlmscaleError(
                f"{source}: column '{col}' must hold finite positive numbers; rows {rows} "
                f"have {[df[col].iloc[r] for r in rows]}"
            )
        df[col] = values.astype(float)
    if "unique_tokens" in df.columns:
        u = pd.to_numeric(df["unique_tokens"], errors="coerce").to_numpy(dtype=float)
        if (~np.isfinite(u) | (u <= 0)).any():
            raise SlmscaleError(f"{source}: column 'unique_tokens' must hold finite positive numbers")


def write_results(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a results table atomically (Parquet or CSV by extension), canonical columns first."""
    path = Path(path)
    front = [c for c in CANONICAL_COLUMNS if c in df.columns]
    df = df[front + [c for c in df.columns if c not in front]]
    suffix = path.suffix.lower()
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            raise SlmscaleError(f"results output {path}: expected a .csv or .parquet extension")
    return path
