"""OpenFaaS adapter for the python3-http(-debian) template: handle(event, context) -> statusCode/headers/body."""

import os
import sys

# The template imports this file as function.handler; the bundled fedless_nb sits next to it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fedless_nb.function import serving  # noqa: E402


def handle(event, context):
    status, reply = serving.invoke_json(event.body)
    return {"statusCode": status, "headers": serving.JSON_HEADERS, "body": reply}
