"""Console lists compute their column headers once per page instead of once per row.

unfold's items_for_result rebuilds every column header, sort links included, for each row it
draws, so a list of 50 rows with 10 columns encodes some 500 query strings per page; on a list
of executions that is most of the page's time. A changelist's headers are the same for all its
rows: the first computation is kept on the changelist and handed out again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from unfold.templatetags import unfold_list

_original_result_headers = unfold_list.result_headers


def result_headers_once(cl: Any) -> Iterator[dict[str, Any]]:
    headers = getattr(cl, "_courier_result_headers", None)
    if headers is None:
        headers = list(_original_result_headers(cl))
        cl._courier_result_headers = headers
    # Each caller gets its own dicts: unfold's templates may annotate them.
    return iter([dict(header) for header in headers])


def install() -> None:
    """Route unfold's per-row header lookups through the per-changelist copy (idempotent)."""
    unfold_list.result_headers = result_headers_once
