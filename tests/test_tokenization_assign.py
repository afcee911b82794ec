"""Batched k-means assignment (`Codebook.assign_many_torch`: the chunks of a batch concatenated, one distance +
argmin per block, one transfer) against a straightforward reference: per-frame squared distances to every
centroid in float64, lowest index on ties. Run on the CPU with the batched path forced (on a GPU it is the
default); the CPU default stays the per-chunk assignment, checked to be unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from slmscale.errors import SlmscaleError
from slmscale.tokenization import kmeans
from slmscale.tokenization.kmeans import Codebook


def _reference(feats: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = ((feats.astype(np.float64)[:, None, :] - centroids.astype(np.float64)[None, :, :]) ** 2).sum(-1)
    return d.argmin(axis=1).astype(np.uint16)  # numpy's argmin: first index of the minimum


@pytest.fixture
def codebook():
    rng = np.random.default_rng(0)
    return Codebook(rng.normal(size=(37, 16)).astype(np.float32) * 3)


def test_batched_matches_the_reference_over_uneven_and_empty_chunks(codebook):
    rng = np.random.default_rng(1)
    lengths = [5, 0, 1, 130, 0, 64, 7]  # empty chunks (e.g. padding-free groups) keep their place
    chunks = [rng.normal(size=(n, 16)).astype(np.float32) * 3 for n in lengths]
    got = codebook.assign_many_torch([torch.from_numpy(c) for c in chunks], "cpu", batched=True)
    assert [len(g) for g in got] == lengths and all(g.dtype == np.uint16 for g in got)
    for g, c in zip(got, chunks):
        np.testing.assert_array_equal(g, _reference(c, codebook.centroids))
    per_chunk = codebook.assign_many_torch([torch.from_numpy(c) for c in chunks], "cpu")  # the CPU default
    for g, p, c in zip(got, per_chunk, chunks):
        np.testing.assert_array_equal(p, codebook.assign_torch(torch.from_numpy(c), "cpu"))
        np.testing.assert_array_equal(g, p)


def test_bf16_features_as_the_gpu_extractor_gives_them(codebook):
    rng = np.random.default_rng(2)
    chunks = [torch.from_numpy(rng.normal(size=(n, 16)).astype(np.float32) * 3).bfloat16() for n in (9, 40)]
    got = codebook.assign_many_torch(chunks, "cpu", batched=True)
    for g, c in zip(got, chunks):
        np.testing.assert_array_equal(g, _reference(c.float().numpy(), codebook.centroids))


def test_ties_go_to_the_lowest_index():
    c = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)  # 0 and 2 are the same centroid
    cb = Codebook(c)
    x = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0], [0.0, 1.0], [-2.0, 0.0]], np.float32)  # equidistant rows too
    want = _reference(x, c)
    assert want.tolist() == [0, 0, 0, 1, 3]
    got = cb.assign_many_torch([torch.from_numpy(x[:2]), torch.from_numpy(x[2:])], "cpu", batched=True)
    np.testing.assert_array_equal(np.concatenate(got), want)
    np.testing.assert_array_equal(cb.assign(x), want)


def test_blocks_larger_than_one_distance_matrix(codebook, monkeypatch):
    monkeypatch.setattr(kmeans, "ASSIGN_BLOCK_ROWS", 8)  # chunks straddle block boundaries
    rng = np.random.default_rng(3)
    chunks = [rng.normal(size=(n, 16)).astype(np.float32) * 3 for n in (3, 20, 1, 9)]
    got = codebook.assign_many_torch([torch.from_numpy(c) for c in chunks], "cpu", batched=True)
    for g, c in zip(got, chunks):
        np.testing.assert_array_equal(g, _reference(c, codebook.centroids))


def test_all_empty_and_bad_shapes(codebook):
    got = codebook.assign_many_torch([torch.zeros(0, 16), torch.zeros(0, 16)], "cpu", batched=True)
    assert [g.shape for g in got] == [(0,), (0,)]
    assert codebook.assign_many_torch([], "cpu", batched=True) == []
    with pytest.raises(SlmscaleError, match=r"expected \[T, 16\]"):
        codebook.assign_many_torch([torch.zeros(4, 15)], "cpu", batched=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batched_assignment_is_the_default_and_matches(codebook):
    rng = np.random.default_rng(4)
    chunks = [rng.normal(size=(n, 16)).astype(np.float32) * 3 for n in (0, 3000, 17, 5000)]
    got = codebook.assign_many_torch([torch.from_numpy(c).cuda() for c in chunks], "cuda")  # batched by default
    for g, c in zip(got, chunks):
        assert g.dtype == np.uint16 and len(g) == len(c)
        if len(c):  # fp32 GEMM on the GPU vs a float64 reference: equal but for the rare exact near-tie
            assert (g == _reference(c, codebook.centroids)).mean() > 0.999
