"""Functions Framework adapter: Google Cloud Functions, Cloud Run and Knative run this same code.

`functions-framework --target fedless_client` serves it locally; the platforms build it
with Google's buildpacks (GOOGLE_FUNCTION_TARGET=fedless_client).
"""

import flask
import functions_framework

from fedless_nb.function import serving


@functions_framework.http
def fedless_client(request):
    connection = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    status, reply = serving.invoke_stream(request.stream, request.content_length, connection)
    if status in (408, 413):  # a streamed reply, which the framework sends without reading the refused body whole first
        return flask.Response(iter([reply]), status, {**serving.JSON_HEADERS, "Connection": "close"})
    return reply, status, serving.JSON_HEADERS
