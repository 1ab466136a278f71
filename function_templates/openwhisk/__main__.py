"""Apache OpenWhisk adapter for the Python runtime: `main(args)` as a web action or through the invoke API.

A web action's args hold the JSON body's fields next to __ow_method, __ow_headers and
__ow_path; it answers with statusCode/headers/body. Through the blocking invoke API the
args are the task itself, and a failure is returned as {"error": {...}} (OpenWhisk then
answers 502 and the HTTP provider reads the status inside).

The run secret and the state secret (fedless_nb/state_secret.py) are bound parameters annotated
final (manifest.yaml), so a caller's arguments cannot replace them. They are taken out of args
before the task is built and handed to the client step for this call only: never written into the
environment, where they would outlive the call in a warm container. Only bound parameters are
protected: OpenWhisk merges a web action's body fields into args, so an action deployed without a
bound secret would take a caller's. Deployed as printed, both are bound; an action without the run
secret refuses every task (no fallback to an unsigned mode), one without the state secret the
stages of a secure round.
"""

from fedless_nb.function import serving
from fedless_nb.security import SECRET_VARIABLE, AuthError
from fedless_nb.state_secret import STATE_SECRET_VARIABLE


def main(args):
    args = dict(args)
    secret = args.pop(SECRET_VARIABLE, None)
    state_secret = args.pop(STATE_SECRET_VARIABLE, None)
    web = "__ow_method" in args
    if not secret:
        refusal = AuthError(f"this action has no bound {SECRET_VARIABLE} parameter, so it refuses every task: "
                            "deploy it with manifest.yaml", status=401)
        status, reply = refusal.status, serving.error_reply(refusal.status, refusal)
    else:
        if web and args.get("__ow_body"):  # a raw (non-JSON-merged) body
            body = args["__ow_body"]
        else:
            body = {name: value for name, value in args.items() if not name.startswith("__ow_")}
        status, reply = serving.invoke(body, secret=secret, state_secret=state_secret)
    if web:
        return {"statusCode": status, "headers": serving.JSON_HEADERS, "body": reply}
    return reply
