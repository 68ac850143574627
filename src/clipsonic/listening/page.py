"""The listening-test page: ``page.html`` (its CSS and JavaScript inline, works from file://) filled in.

The page knows only opaque trial ids, audio file names and queries. Each listener gets the trials in an order
seeded by (test id, listener id), so a reload resumes it; progress is kept in ``localStorage`` under the test id.
Ratings are 1–5 for fidelity and for relevance to the shown query. The answers download as CSV with the columns
of :data:`CSV_COLUMNS` (the test id in every row, so answers cannot be scored against another test's key).
"""

from __future__ import annotations

import html
import importlib.resources
import json
import string
from typing import Any

CSV_COLUMNS = ("test_id", "listener", "trial_id", "position", "query", "fidelity", "relevance", "plays", "answered_at")
CRITERIA = ("fidelity", "relevance")  # the names of page.html's two rating scales


class _PageTemplate(string.Template):
    delimiter = "@"  # the page's JavaScript uses $ (its getElementById helper and template literals)


def render_page(data: dict[str, Any]) -> str:
    """The page for ``{"test_id", "title", "trials": [{"id", "audio", "query"}]}``."""
    # "</" would end the script element early and "<!--" could start an escaped script block: JSON's \u003c is "<"
    payload = json.dumps({**data, "columns": CSV_COLUMNS}, ensure_ascii=False).replace("<", "\\u003c")
    template = importlib.resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    return _PageTemplate(template).substitute(title=html.escape(str(data.get("title", "Listening test"))),
                                              count=len(data["trials"]), payload=payload)
