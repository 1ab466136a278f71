"""The classroom's live tables: the teacher's join command and roster, and the student's calls.

Both are an HTML widget re-rendered whenever their rows change (from the service's or the run's
thread: ipykernel sends widget messages from any thread), with a text line for frontends without
widgets. The table comes from pandas, so it looks like the other tables the magics show.
"""

from __future__ import annotations

import html
from typing import Any, Callable


_STYLE = "<style>.fedless-table td, .fedless-table th {padding: 2px 12px; text-align: left}</style>"


def _table(rows: list[dict[str, Any]], empty: str) -> str:
    if not rows:
        return f"<i>{html.escape(empty)}</i>"
    import pandas as pd

    return _STYLE + pd.DataFrame(rows).to_html(index=False, border=0, classes="fedless-table")


class LiveTable:
    """`heading()` over a table of `rows()`, both redrawn by `refresh()`."""

    def __init__(self, heading: Callable[[], str], rows: Callable[[], list[dict[str, Any]]], empty: str,
                 css_class: str) -> None:
        import ipywidgets as widgets

        self.heading, self.rows, self.empty = heading, rows, empty
        self.widget = widgets.HTML(self._html())
        self.widget.add_class(css_class)

    def _html(self) -> str:
        return f"{self.heading()}{_table(self.rows(), self.empty)}"

    def refresh(self) -> None:
        self.widget.value = self._html()

    def text(self) -> str:
        """The table as plain text, for frontends without widgets (and saved notebooks read as text)."""
        import pandas as pd

        rows = self.rows()
        return _strip(self.heading()) + "\n" + (pd.DataFrame(rows).to_string(index=False) if rows else self.empty)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display({**self.widget._repr_mimebundle_(), "text/plain": self.text()}, raw=True)


def _strip(markup: str) -> str:
    """Markup as one line of text: tags dropped, entities decoded, blank runs collapsed."""
    import re

    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def roster_table(service: Any) -> LiveTable:
    """The teacher's widget: how to join (command and the current code, with its expiry) and who has joined."""
    import time

    def heading() -> str:
        expires = time.strftime("%H:%M", time.localtime(service.roster.code.expires_at))
        limit = service.roster.names_limit.summary()  # empty without a limit of names per address
        return (f"<h4>Classroom open at {html.escape(service.url)}</h4>"
                f"<p>Join code <b class='fedless-join-code' style='font-size:150%'>{service.code}</b> "
                f"(valid until {expires}). In your notebook run:</p>"
                f"<pre class='fedless-join-command'>%load_ext fedless_nb\n{html.escape(service.join_command())}</pre>"
                + (f"<p class='fedless-names-per-address'>{html.escape(limit)}</p>" if limit else ""))

    table = LiveTable(heading, service.roster.rows, "No student has joined yet.", "fedless-roster")
    service.roster.on_change = table.refresh
    return table


def calls_table(student: Any) -> LiveTable:
    """The student's widget: every call the teacher's run made to their function."""
    heading = f"<h4>{html.escape(student.name)}: your function at {html.escape(student.url)}</h4>"
    table = LiveTable(lambda: heading, student.rows, "Waiting for the teacher's first round...", "fedless-calls")
    student.on_call = lambda _call: table.refresh()
    return table
