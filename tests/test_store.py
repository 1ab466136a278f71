import json
import time
from pathlib import Path

import pytest

from fedless_nb.store import LocalStore, MissingKeyError, StoreError, store_from_descriptor
from fedless_nb.store.keys import client_data_key, global_weights_key, update_key


def test_put_get_exists_delete(tmp_path):
    store = LocalStore(tmp_path)
    store.put("runs/r1/a.bin", b"hello")
    assert store.exists("runs/r1/a.bin") and store.get("runs/r1/a.bin") == b"hello"
    store.put("runs/r1/a.bin", bytearray(b"again"))
    assert store.get("runs/r1/a.bin") == b"again"
    store.delete("runs/r1/a.bin")
    store.delete("runs/r1/a.bin")
    assert not store.exists("runs/r1/a.bin")
    assert not list(tmp_path.rglob(".put-*")), "no temporary files are left behind"


def test_missing_key_names_the_key(tmp_path):
    with pytest.raises(MissingKeyError, match="nope"):
        LocalStore(tmp_path).get("nope")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../b", "a//b", "", "a b", "./a", "a\n", "runs/r1/a.bin\n"])
def test_keys_cannot_escape_the_store(tmp_path, key):
    with pytest.raises(StoreError):
        LocalStore(tmp_path).put(key, b"x")


def test_a_presigned_grant_that_is_not_http_is_never_fetched(tmp_path):
    (tmp_path / "secret.txt").write_text("private")
    store = store_from_descriptor({"kind": "presigned", "get": {"k": (tmp_path / "secret.txt").as_uri()}, "post": {},
                                   "expires_at": 4e9})
    with pytest.raises(StoreError, match="not http\\(s\\)"):
        store.get("k")


def test_descriptor_rebuilds_the_same_store(tmp_path):
    store = LocalStore(tmp_path)
    store.put("k", b"v")
    assert store_from_descriptor(store.descriptor()).get("k") == b"v"
    with pytest.raises(StoreError, match="unknown store kind"):
        store_from_descriptor({"kind": "ftp"})


def test_keys_are_namespaced_by_run_round_and_client():
    assert update_key("r", 3, "client-0001") != update_key("r", 4, "client-0001")
    assert update_key("r", 3, "client-0001") != update_key("r", 3, "client-0002")
    assert global_weights_key("r", 0) != global_weights_key("q", 0)
    assert client_data_key("p", "client-0001").startswith("data/p/")


def test_a_task_store_refuses_a_write_over_its_limit(tmp_path):
    """The local store's twin of a presigned POST's content-length-range: a task's writes are capped."""
    function_store = store_from_descriptor(LocalStore(tmp_path).task_descriptor([], ["u"], 4e9, max_write_bytes=8))
    function_store.put("u", b"12345678")
    with pytest.raises(StoreError, match="'u' is 9 bytes, more than the 8 this task may write"):
        function_store.put("u", b"123456789")
    assert LocalStore(tmp_path).get("u") == b"12345678"


def test_delete_prefix_removes_a_folder_of_keys_only(tmp_path):
    store = LocalStore(tmp_path)
    for key in ("runs/r/round-00002/updates/a.weights", "runs/r/round-00002/global.weights", "runs/r/round-00001/x"):
        store.put(key, b"v")
    store.delete_prefix("runs/r/round-00002")
    store.delete_prefix("runs/r/round-00009")  # nothing there: not an error
    assert [store.exists(k) for k in ("runs/r/round-00002/updates/a.weights", "runs/r/round-00002/global.weights",
                                      "runs/r/round-00001/x")] == [False, False, True]


def test_a_function_whose_store_roots_do_not_parse_refuses_every_task_naming_the_variable(tmp_path, monkeypatch):
    from fedless_nb.function.task_store import task_store
    from fedless_nb.security import AuthError

    monkeypatch.setenv("FEDLESS_STORE_ROOTS", f"{tmp_path};relative/folder")
    with pytest.raises(AuthError, match="^FEDLESS_STORE_ROOTS: 'relative/folder' is neither .*where the function is deployed$") as caught:
        task_store(LocalStore(tmp_path).descriptor())
    assert caught.value.status == 500
    monkeypatch.setenv("FEDLESS_STORE_ROOTS", f" {tmp_path} ;; ")
    assert task_store(LocalStore(tmp_path / "run").descriptor()).root == tmp_path / "run"
    monkeypatch.setenv("FEDLESS_STORE_ROOTS", "")
    assert task_store({"kind": "local", "root": "/anywhere"}).root == Path("/anywhere")


@pytest.mark.parametrize("setting", ["store roots", "secret file"])
def test_a_misconfigured_function_tells_its_caller_only_that_and_its_log_what(tmp_path, monkeypatch, caplog, setting):
    """Checked before the task's token, a function's wrong FEDLESS_STORE_ROOTS or unreadable secret file answered any
    caller, one without the secret too, with the setting's value or the file's path; the reply now says only that the
    function is misconfigured (500), and the deployer's log keeps the detail."""
    from fedless_nb.function import handler
    from fedless_nb.function.serving import invoke
    from fedless_nb import security
    from fedless_nb.security import NonceCache
    from signed_tasks import make_task, write_inputs

    monkeypatch.setattr(handler, "_STATE", handler._WarmState())
    monkeypatch.setattr(security, "SPENT_TOKENS", NonceCache())
    monkeypatch.delenv("FEDLESS_ALLOW_UNSIGNED", raising=False)
    if setting == "store roots":
        monkeypatch.setenv("FEDLESS_RUN_SECRET", "the-secret")
        monkeypatch.setenv("FEDLESS_STORE_ROOTS", "/srv/private-store-name;relative/folder")
        detail = "relative/folder"
    else:
        monkeypatch.delenv("FEDLESS_RUN_SECRET", raising=False)
        monkeypatch.setenv("FEDLESS_RUN_SECRET_FILE", str(tmp_path / "private-mount" / "secret"))
        detail = "private-mount"
    store, spec = write_inputs(tmp_path / "store")
    task = make_task(store, spec, secret="not-the-functions-secret")
    large = json.dumps({**task, "padding": "x" * 2**20})  # its token is checked before it is parsed: the secret first
    for body in (task, large) if setting == "secret file" else (task,):
        with caplog.at_level("ERROR", logger="fedless_nb.function"):
            status, reply = invoke(body)
        assert (status, reply["error"]["message"]) == (
            500, "this function is misconfigured where it is deployed; its log says what to fix"), reply
        assert detail not in json.dumps(reply)
        assert detail in caplog.text
        caplog.clear()
    assert not store.exists(task["update"])


class _Redirecting:
    """A real HTTP server on 127.0.0.1 that answers every GET and POST with `code` to `location`, and records them."""

    def __init__(self, code: int, location: str):
        import http.server
        import threading

        paths = self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _redirect(self):
                paths.append(self.path)
                self.send_response(code)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _redirect

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/bucket/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_presigned_store_follows_no_redirect(code):
    """The roots check covers a task's URLs, and urllib followed a redirect from a server under them to anywhere
    (this machine's and its network's services included); S3's presigned URLs need none. A redirect is refused."""
    from fedless_nb.store import PresignedStore

    elsewhere = _Redirecting(302, "http://127.0.0.1:9/")  # stands for any other service: it records what reaches it
    redirecting = _Redirecting(code, elsewhere.url + "secret")
    try:
        store = PresignedStore({"global": redirecting.url + "global"}, {"update": {"url": redirecting.url, "fields": {}}},
                               time.time() + 60)
        refusal = f"redirect \\(HTTP {code} to 127.0.0.1:{elsewhere.server.server_address[1]}\\), which a function does not follow"
        for attempt in (lambda: store.get("global"), lambda: store.exists("global"), lambda: store.put("update", b"x")):
            with pytest.raises(StoreError, match=refusal):
                attempt()
        assert len(redirecting.paths) == 3 and elsewhere.paths == [], elsewhere.paths
    finally:
        redirecting.server.shutdown()
        elsewhere.server.shutdown()


@pytest.mark.parametrize("path", ["gl\u00f6bal", "a b", "a\tb"])
def test_a_presigned_url_a_request_cannot_carry_is_one_store_error(path):
    """A task's URL past ASCII or with a space failed in urllib (UnicodeEncodeError, InvalidURL): a 500, which
    providers retry as the function's failure. It is a store error naming the key, before any request."""
    from fedless_nb.store import PresignedStore

    store = PresignedStore({"global": f"http://127.0.0.1:9/bucket/{path}"}, {}, time.time() + 60)
    with pytest.raises(StoreError, match="^the task's URL for 'global' holds characters a request cannot carry"):
        store.get("global")
