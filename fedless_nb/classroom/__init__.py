"""A live classroom: every student's notebook serves one client function of the teacher's run.

The teacher opens a join service (`service.py`) that hands out per-student keys and serves
the run's store through signed URLs (`served_store.py`); each student's kernel runs a small
function server (`student.py`) on its own thread, which trains on data that never leaves the
kernel. `%fedless_train --provider classroom` then runs rounds over the joined students with
the HTTP provider, one provider per student (`roster.py`). Widgets live in `widgets.py` and
`drawing.py`. Nothing here is imported by function bundles.
"""

from .errors import ClassroomError

__all__ = ["ClassroomError"]
