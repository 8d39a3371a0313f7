"""A stand-in for SGLang's CPU kernel package, enough for its CPU engine on a CPU without AMX.

SGLang's CPU engine imports a few helpers from ``sgl_kernel`` at module level, but no
registry ships a CPU build of that package. On a CPU without AMX every model layer takes
SGLang's plain-torch path, and the only helper a Llama calls is
``assign_req_to_token_pool_cpu``, written here in plain torch. Any other name imports as a
function that says it is missing when called, so that an unexpected call fails loudly.

Put the folder holding this package on ``PYTHONPATH`` of the SGLang server only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def assign_req_to_token_pool_cpu(req_pool_indices: Any, req_to_token: Any, start_offset: Any,
                                 end_offset: Any, out_cache_loc: Any, pool_len: int) -> None:
    """Write each request's new KV-cache slots into its row of the request-to-token table.

    ``out_cache_loc`` holds the slots of every request in turn; request i's share is
    ``end_offset[i] - start_offset[i]`` long and goes to columns ``start_offset[i]`` to
    ``end_offset[i]`` of row ``req_pool_indices[i]``. In place; ``pool_len`` is not needed.
    """
    del pool_len
    offset = 0
    for i in range(len(req_pool_indices)):
        start, end = int(start_offset[i]), int(end_offset[i])
        n = end - start
        if n > 0:
            row = int(req_pool_indices[i])
            req_to_token[row, start:end] = out_cache_loc[offset:offset + n].to(
                req_to_token.dtype)
        offset += max(n, 0)


def __getattr__(name: str) -> Callable[..., Any]:
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)  # import machinery and hasattr() probes: absent

    def missing(*_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError(f"sgl_kernel.{name} has no CPU stand-in")

    missing.__name__ = name
    return missing
