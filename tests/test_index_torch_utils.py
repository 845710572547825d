"""pytorch-metric-learning imports faiss.contrib.torch_utils, which patches faiss's search methods.

The patched `search` drops the `params` argument (selectors, efSearch, nprobe); searches must still work
in a process that has imported it, as the training and evaluation code do.
"""

from __future__ import annotations

import faiss.contrib.torch_utils  # noqa: F401  (the patch under test)
import numpy as np
import pytest

from lookalike.index import INDEX_KINDS, create_index


@pytest.mark.parametrize("kind", [k for k in INDEX_KINDS if k != "auto"])
def test_filtered_search_after_torch_utils_is_imported(kind: str) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = create_index(kind, 32)
    index.add(np.arange(2000, dtype=np.int64), vectors)
    allowed = np.arange(0, 2000, 2, dtype=np.int64)
    scores, ids = index.search(vectors[:4], 5, allowed_ids=allowed)
    assert (ids % 2 == 0).all() and (ids >= 0).all()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
