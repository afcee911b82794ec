"""Consecutive-duplicate collapse of frame units (GSLM "dedup"), keeping how long each unit lasted."""
from __future__ import annotations

import numpy as np

__all__ = ["collapse_runs", "expand_runs"]

_MAX_RUN = np.iinfo(np.uint16).max


def collapse_runs(frame_units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[5 5 5 7 7 5] -> units [5 7 5], durations [3 2 1] (uint16 both).

    A run longer than 65535 frames (11 min of one unit at 100 Hz) is split into several entries so that the
    durations fit uint16; expanding always gives back the input."""
    x = np.asarray(frame_units)
    if len(x) == 0:
        return np.zeros(0, np.uint16), np.zeros(0, np.uint16)
    starts = np.flatnonzero(np.concatenate([[True], x[1:] != x[:-1]]))
    lengths = np.diff(np.append(starts, len(x)))
    units = x[starts]
    if lengths.max() > _MAX_RUN:
        pieces = -(-lengths // _MAX_RUN)  # ceil
        units = np.repeat(units, pieces)
        split = [np.full(p, _MAX_RUN) for p in pieces]
        for s, n in zip(split, lengths):
            s[-1] = n - _MAX_RUN * (len(s) - 1)
        lengths = np.concatenate(split)
    return units.astype(np.uint16), lengths.astype(np.uint16)


def expand_runs(units: np.ndarray, durations: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(units, np.uint16), np.asarray(durations, np.int64))
