"""AWS Lambda adapter: a direct Invoke's event is the task; a Function URL's or API Gateway's event carries it as its body.

Direct invocations (the LambdaProvider's RequestResponse calls) return the result, or
raise, so Lambda reports the error's type and message as a function error (a task refused
before training as a PayloadError, the type its caller reads as refused). HTTP events
get a status code (see fedless_nb.function.serving) so a caller's retry policy can tell a refused
task from a transient failure.
"""

import base64

from fedless_nb.function import serving


def lambda_handler(event, context):
    if isinstance(event, dict) and "requestContext" in event and "body" in event:
        body = event["body"] or ""
        if event.get("isBase64Encoded"):
            body = base64.b64decode(body)
        status, reply = serving.invoke_json(body)
        return {"statusCode": status, "headers": serving.JSON_HEADERS, "body": reply}
    return serving.handle_direct(event)
