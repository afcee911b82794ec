"""The structure of a run grid: which runs share a compute budget, which share a model size.

Other people's tables carry values read off plots (Epoch's extraction of Chinchilla's isoFLOP figure has
142 distinct model sizes for 245 runs), so "the same budget" and "the same size" are clusters: sorted values
are chained while each stays within a ratio of its cluster's smallest member.
"""
from __future__ import annotations

import numpy as np

__all__ = ["cluster_labels", "budget_groups", "size_groups", "group_centres"]

BUDGET_RATIO = 1.5  # runs within a factor 1.5 in compute share an isoFLOP budget
SIZE_RATIO = 1.1  # model sizes within 10 % count as one size


def cluster_labels(values, ratio: float) -> np.ndarray:
    """Integer label per value (0, 1, … in increasing order of value) for log-scale clusters."""
    values = np.asarray(values, dtype=float)
    labels = np.empty(len(values), dtype=int)
    if not len(values):
        return labels
    order = np.argsort(values, kind="stable")
    label, first = 0, values[order[0]]
    for i in order:
        if values[i] > first * ratio:
            label, first = label + 1, values[i]
        labels[i] = label
    return labels


def budget_groups(flops) -> np.ndarray:
    return cluster_labels(flops, BUDGET_RATIO)


def size_groups(n_params) -> np.ndarray:
    return cluster_labels(n_params, SIZE_RATIO)


def group_centres(values, labels) -> np.ndarray:
    """Geometric mean of each label's values, indexed by label."""
    values, labels = np.log(np.asarray(values, dtype=float)), np.asarray(labels)
    return np.exp(np.array([values[labels == g].mean() for g in range(labels.max() + 1)]))
