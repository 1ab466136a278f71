"""Azure Functions adapter (Python v1 model): an HTTP trigger with authLevel function (callers send x-functions-key)."""

import azure.functions as func

from fedless_nb.function import serving


def main(req: func.HttpRequest) -> func.HttpResponse:
    status, reply = serving.invoke_json(req.get_body())
    return func.HttpResponse(reply, status_code=status, mimetype="application/json")
