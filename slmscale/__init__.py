"""slmscale: scaling studies of speech language models on Ray (Cuervo & Marxer, EMNLP 2024).

One import root, four stages along the data path, and a small core that every stage shares:

    slmscale.tokenization   audio -> discrete units (Ray Data)             folder tokenization/
    slmscale.models         units -> trained speech LM (Ray Train)          folder models/
    slmscale.sweep          the N x D grid of runs -> results table (Tune)  folder sweep/
    slmscale.analysis       results table -> L(N, D), N_opt/D_opt, plots    folder analysis/

    slmscale.errors     SlmscaleError (bad user input; the CLI prints it as one line)
    slmscale.io         atomic writes, checksums, code version
    slmscale.ray_utils  ensure_ray: join a cluster or start a local Ray
    slmscale.typed      TypedConfig: base of the typed configs (bad values raise SlmscaleError)
    slmscale.cli        the `slmscale` command (`python -m slmscale`)
    slmscale.demo       `slmscale demo`: the whole study end to end on an embedded default

Importing `slmscale` (or `slmscale.analysis`) loads neither Ray nor torch nor audio code.
"""
from slmscale.errors import SlmscaleError

__all__ = ["SlmscaleError"]
