"""k-means codebooks: fit (scikit-learn), save/load as `.npy` + `.json` (never pickle), assign frames to units.

A codebook on disk is two files side by side: `NAME.npy` (float32 centroids [K, D]) and `NAME.json`
(K, D, the feature extractor it was fitted on, the fit's provenance). Its hash covers the centroid bytes and
the feature description, so two codebooks with the same hash give the same units.
`import_joblib` converts a scikit-learn/joblib k-means (e.g. TWIST's 500-unit codebook); unpickling runs
arbitrary code, so it refuses unless the caller passes `trust_pickle=True`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_path, atomic_write_json, code_version

__all__ = ["Codebook", "load_codebook", "fit_kmeans", "import_joblib", "codebook_paths", "ASSIGN_BLOCK_ROWS"]

# Frames per distance matrix in the batched torch assignment: [65,536, K=500] float32 is 131 MB on the device.
ASSIGN_BLOCK_ROWS = 65536


def codebook_paths(path: str | Path) -> tuple[Path, Path]:
    """(NAME.npy, NAME.json) for NAME, NAME.npy or NAME.json."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".npy", ".json") else path
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


@dataclass
class Codebook:
    centroids: np.ndarray  # float32 [K, D]
    features: dict[str, Any] = field(default_factory=dict)  # the extractor's describe() it was fitted on
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        c = np.ascontiguousarray(self.centroids, dtype=np.float32)
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            raise SlmscaleError(f"codebook: centroids must be a [K, D] array, got shape {c.shape}")
        if c.shape[0] > 65535:
            raise SlmscaleError(f"codebook: K={c.shape[0]} does not fit uint16 units (max 65535)")
        if not np.isfinite(c).all():
            raise SlmscaleError("codebook: centroids contain NaN or inf")
        self.centroids = c
        self._torch_cache: dict[str, Any] = {}

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.features, sort_keys=True).encode())
        h.update(str(self.centroids.shape).encode())
        h.update(self.centroids.astype("<f4").tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        npy, meta = codebook_paths(path)
        with atomic_path(npy, suffix=".npy") as tmp:
            np.save(tmp, self.centroids.astype("<f4"), allow_pickle=False)
        atomic_write_json(meta, {"k": self.k, "dim": self.dim, "features": self.features, "hash": self.hash,
                                 "provenance": self.provenance, "format": "slmscale-kmeans-v1"})
        return npy

    def assign(self, feats: np.ndarray, device: str = "cpu") -> np.ndarray:
        """Nearest centroid (squared Euclidean) of each frame: uint16 [T]. On GPU the distance matmul runs there."""
        feats = np.asarray(feats, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise SlmscaleError(f"codebook: features have shape {feats.shape}, expected [T, {self.dim}]")
        if len(feats) == 0:
            return np.zeros(0, np.uint16)
        if device == "cpu":
            c = self.centroids
            # argmin ||x - c||^2 = argmin (||c||^2 - 2 x.c); chunked so a 2-hour file does not make a [T, K] giant
            c_sq = (c.astype(np.float64) ** 2).sum(1)
            out = np.empty(len(feats), np.uint16)
            for s in range(0, len(feats), 65536):
                block = feats[s: s + 65536].astype(np.float64)
                out[s: s + 65536] = np.argmin(c_sq[None, :] - 2.0 * block @ c.T.astype(np.float64), axis=1)
            return out
        import torch

        return self.assign_torch(torch.from_numpy(feats).to(device), device)

    def _device_centroids(self, device):
        """(centroids [K, D], their squared norms [K]) as float32 tensors on `device`, made once per device."""
        import torch

        if device not in self._torch_cache:
            c = torch.from_numpy(self.centroids).to(device)
            self._torch_cache[device] = (c, (c * c).sum(1))
        return self._torch_cache[device]

    def _argmin_torch(self, x, device):
        """Nearest centroid of each row of x (any float dtype, on `device`): int32 ids on the device."""
        import torch

        c, c_sq = self._device_centroids(device)
        return (c_sq[None, :] - 2.0 * x.float() @ c.T).argmin(dim=1).to(torch.int32)

    def assign_torch(self, feats, device):
        """Assignment of a torch tensor already on `device` (GPU path: features never leave the device)."""
        return self._argmin_torch(feats, device).cpu().numpy().astype(np.uint16)

    def assign_many_torch(self, feats: list, device, batched: bool | None = None) -> list[np.ndarray]:
        """Assignment of several [T_i, D] tensors already on `device`: uint16 [T_i] each.

        Batched (the default off the CPU): the chunks' frames are concatenated, one distance + argmin runs on the
        device per block of ASSIGN_BLOCK_ROWS frames, and the ids come back in one transfer (into pinned host memory
        on CUDA): one host sync per call instead of one `.cpu()` per chunk. On the CPU there is no sync to save and
        the default is the per-chunk `assign_torch`, so CPU units stay bit-identical to what they were (a GEMM's
        rounding may depend on how many rows it gets). Ties go to the lowest centroid index either way (argmin)."""
        import torch

        if batched is None:
            batched = torch.device(device).type != "cpu"
        if not batched:
            return [self.assign_torch(f, device) for f in feats]
        lengths = [int(f.shape[0]) for f in feats]
        for f in feats:
            if f.ndim != 2 or f.shape[1] != self.dim:
                raise SlmscaleError(f"codebook: features have shape {tuple(f.shape)}, expected [T, {self.dim}]")
        total = sum(lengths)
        if total == 0:
            return [np.zeros(0, np.uint16) for _ in feats]
        x = torch.cat([f for f in feats if f.shape[0]]) if len(feats) > 1 else feats[0]
        ids = torch.empty(total, dtype=torch.int32, device=x.device)
        for s in range(0, total, ASSIGN_BLOCK_ROWS):
            ids[s: s + ASSIGN_BLOCK_ROWS] = self._argmin_torch(x[s: s + ASSIGN_BLOCK_ROWS], device)
        if ids.device.type == "cuda":
            host = torch.empty(total, dtype=torch.int32, pin_memory=True)
            host.copy_(ids, non_blocking=True)
            torch.cuda.current_stream(ids.device).synchronize()  # the call's one sync
        else:
            host = ids
        flat = host.numpy().astype(np.uint16)  # a copy: the pinned buffer goes back to torch's cache
        return np.split(flat, np.cumsum(lengths)[:-1])


def load_codebook(path: str | Path) -> Codebook:
    npy, meta_path = codebook_paths(path)
    if not npy.is_file():
        raise SlmscaleError(f"k-means codebook not found: {npy} (expected NAME.npy + NAME.json from `slmscale tokenize fit-kmeans`)")
    if not meta_path.is_file():
        raise SlmscaleError(f"{npy}: missing its metadata file {meta_path.name} (K, feature description)")
    try:
        centroids = np.load(npy, allow_pickle=False)
    except Exception as exc:  # ValueError for object arrays, OSError for garbage
        raise SlmscaleError(f"{npy}: not a plain numpy array file: {exc}") from None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise SlmscaleError(f"{meta_path}: invalid JSON: {exc}") from None
    cb = Codebook(centroids, features=meta.get("features") or {}, provenance=meta.get("provenance") or {})
    if meta.get("k") not in (None, cb.k) or meta.get("dim") not in (None, cb.dim):
        raise SlmscaleError(f"{meta_path}: fields 'k'/'dim' ({meta.get('k')}, {meta.get('dim')}) do not match "
                            f"{npy.name} of shape {cb.centroids.shape}")
    return cb


def fit_kmeans(features: np.ndarray, k: int, feature_desc: dict, seed: int = 0, max_iter: int = 100,
               batch_size: int = 10000, extra: dict | None = None) -> Codebook:
    """MiniBatchKMeans (k-means++ init, 3 inits) on [N, D] frames; deterministic for a given seed."""
    from sklearn.cluster import MiniBatchKMeans

    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise SlmscaleError(f"fit-kmeans: features must be [N, D], got {features.shape}")
    if not 1 <= k <= 65535:
        raise SlmscaleError(f"fit-kmeans: field 'k' must be in [1, 65535], got {k}")
    if len(features) < k:
        raise SlmscaleError(f"fit-kmeans: {len(features)} frames is fewer than k={k} clusters; give more audio")
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, max_iter=max_iter,
                         batch_size=min(batch_size, len(features)), compute_labels=False)
    km.fit(features)
    return Codebook(km.cluster_centers_, features=feature_desc,
                    provenance={"method": "sklearn.MiniBatchKMeans", "seed": seed, "n_frames": int(len(features)),
                                "inertia_per_frame": float(-km.score(features[:200000]) / min(len(features), 200000)),
                                "code_version": code_version(), **(extra or {})})


def import_joblib(src: str | Path, out: str | Path, feature_desc: dict, trust_pickle: bool = False) -> Path:
    """Convert a pickled scikit-learn k-means (joblib/pickle file) into NAME.npy + NAME.json."""
    src = Path(src)
    if not trust_pickle:
        raise SlmscaleError(
            f"{src}: importing a pickled codebook runs code from the file; re-run with --trust-pickle if you trust its origin"
        )
    if not src.is_file():
        raise SlmscaleError(f"k-means file not found: {src}")
    import joblib

    try:
        obj = joblib.load(src)
    except Exception as exc:  # pickle errors, EOFError for truncated files
        raise SlmscaleError(f"{src}: could not unpickle ({type(exc).__name__}: {exc})") from None
    centers = getattr(obj, "cluster_centers_", obj)
    if isinstance(obj, dict):
        centers = obj.get("cluster_centers_", obj.get("centroids"))
    try:
        arr = np.asarray(centers, dtype=np.float32)
    except (TypeError, ValueError):
        raise SlmscaleError(f"{src}: expected a fitted k-means (with cluster_centers_) or a [K, D] array, got {type(obj).__name__}") from None
    cb = Codebook(arr, features=feature_desc, provenance={"imported_from": str(src.resolve()), "code_version": code_version()})
    return cb.save(out)
