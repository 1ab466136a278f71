"""The classroom's join flow and its refusals, over real aiohttp servers on 127.0.0.1 in this process."""

import asyncio
import base64
import json
import os
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from aiohttp import web

from fedless_nb.classroom.errors import ClassroomError
from fedless_nb.classroom.function_hosts import FunctionHosts
from fedless_nb.classroom import roster, server_thread
from fedless_nb.classroom import service as service_module
from fedless_nb.classroom import student as student_module
from fedless_nb.classroom.roster import leave_proof
from fedless_nb.classroom.service import ClassroomService
from fedless_nb.classroom.student import StudentFunction, compare_with_class
from fedless_nb.experiment import ExperimentConfig
from fedless_nb.function import handler
from fedless_nb.providers.base import InvocationError
from fedless_nb import security
from fedless_nb.security import NonceCache, client_key, new_secret
from fedless_nb.store import PresignedStore, StoreError, decode_arrays, encode_arrays

from loopback import serving
from sealed_states import assert_sealed_for_the_function_alone
from signed_tasks import make_task, reading_file, write_custom_layer_inputs, write_inputs


@pytest.fixture
def classroom(tmp_path):
    service = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"))
    yield service
    service.close()


@pytest.fixture
def fresh_function_state(monkeypatch):
    monkeypatch.setattr(handler, "_STATE", handler._WarmState())
    monkeypatch.setattr(security, "SPENT_TOKENS", NonceCache())


def post(url, message):
    return post_body(url, json.dumps(message).encode())


def post_body(url, body):
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_student_joins_with_the_code_and_gets_their_own_key(classroom):
    student = StudentFunction(classroom.url, classroom.code.lower(), "alice", host="127.0.0.1")
    try:
        assert [row["name"] for row in classroom.roster.rows()] == ["alice"]
        assert student.url.startswith("http://127.0.0.1:")
        assert student._secret == classroom.roster.students["alice"].secret != classroom.roster.secret
        assert classroom.provider_configs()[0] == {"kind": "http", "name": "alice", "url": student.url, "clients": 1,
                                                   "workers": 1, "timeout": 60.0, "secret_env": None}
    finally:
        student.leave()
    assert classroom.roster.rows()[0]["status"] == "left"
    with pytest.raises(ClassroomError, match="no student has joined yet"):
        classroom.provider_configs()


def test_a_wrong_code_is_refused_with_one_line(classroom):
    with pytest.raises(ClassroomError) as refused:
        StudentFunction(classroom.url, "WRONG1", "alice", host="127.0.0.1")
    assert str(refused.value) == "the teacher refused: wrong join code: copy the code shown on the teacher's screen"
    assert classroom.roster.rows() == []


def test_an_expired_code_is_refused_with_one_line(classroom):
    classroom.roster.code.expires_at = time.time() - 1
    with pytest.raises(ClassroomError) as refused:
        StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    assert "\n" not in str(refused.value)
    assert "the join code expired: ask the teacher for a new one (%fedless_classroom open)" in str(refused.value)


def test_a_replayed_registration_is_refused_with_one_line(classroom):
    registration = {"code": classroom.code, "name": "bob", "url": "http://127.0.0.1:9/", "nonce": secrets.token_hex(16),
                    "sent_at": time.time(), "own_examples": None}
    status, reply = post(classroom.url + "/join", registration)
    assert status == 200 and set(reply) == {"name", "secret"}
    status, reply = post(classroom.url + "/join", {**registration, "name": "mallory"})
    assert status == 403
    assert reply["error"] == "this registration was already used or is too old (a replay): run %fedless_join again"
    stale = {**registration, "name": "carol", "nonce": secrets.token_hex(16), "sent_at": time.time() - 3600}
    assert post(classroom.url + "/join", stale)[0] == 403
    assert [row["name"] for row in classroom.roster.rows()] == ["bob"]


def registration(classroom, name, **fields):
    return {"code": classroom.code, "name": name, "url": "http://127.0.0.1:9/", "nonce": secrets.token_hex(16),
            "sent_at": time.time(), "own_examples": None, **fields}


@pytest.mark.parametrize("fields, refusal", [
    ({"own_examples": "abc"}, "own examples 'abc': train on 1 to 10000 examples of your own"),
    ({"own_examples": -5}, "own examples '-5': train on 1 to 10000"),  # a negative FedAvg weight
    ({"own_examples": 0}, "own examples '0': train on 1 to 10000"),
    ({"own_examples": 10**12}, "own examples '1000000000000': train on 1 to 10000"),  # the whole average's weight
    ({"own_examples": 2.5}, "own examples '2.5': train on 1 to 10000"),
    ({"url": "file:///etc/passwd"}, "the function URL 'file:///etc/passwd' is not an http(s) URL with a host"),
    ({"url": "http://127.0.0.1:notaport/"}, "is not an http(s) URL with a host"),
    ({"url": None}, "the function URL '' is not an http(s) URL with a host"),
    ({"sent_at": float("nan")}, "this registration was already used or is too old (a replay)"),
])
def test_a_malformed_registration_is_refused_with_one_line(classroom, fields, refusal):
    status, reply = post(classroom.url + "/join", registration(classroom, "mallory", **fields))
    assert status == 403 and refusal in reply["error"] and "\n" not in reply["error"]
    assert classroom.roster.rows() == []


def test_a_code_or_proof_past_ascii_is_refused_with_one_line(classroom):
    """hmac.compare_digest raises TypeError on a str with a character past ASCII: a join code 'ÄÖ1234' (from anyone)
    and a leave's proof 'é' were a 500 with a traceback in the teacher's log, and the wrong code went uncounted."""
    assert post(classroom.url + "/join", registration(classroom, "alice"))[0] == 200
    status, reply = post(classroom.url + "/join", registration(classroom, "mallory", code="ÄÖ1234"))
    assert (status, reply["error"]) == (403, "wrong join code: copy the code shown on the teacher's screen")
    status, reply = post(classroom.url + "/leave", {"name": "alice", "proof": "é"})
    assert (status, reply["error"]) == (403, "no student 'alice' with that key in this class")
    assert [row["name"] for row in classroom.roster.rows()] == ["alice"]


@pytest.mark.parametrize("url", [
    "http://10.0.0.5:8080/",  # another machine on the teacher's network
    "http://[::ffff:10.0.0.5]:8080/",  # the same, IPv4-mapped
    "http://0.0.0.0:8080/",  # the teacher's own machine, as a destination
    "http://localhost:8080/",  # a name: resolved at each call, it could point anywhere by then
    "http://127.1:8080/",  # a name to the URL parser, 127.0.0.1 to the resolver
])
def test_a_function_url_elsewhere_than_the_students_own_address_is_refused(classroom, url):
    """The teacher's kernel POSTs every task to the function URL: a student joining from 127.0.0.1 may name their own
    address (loopback counts as one), not another machine, nor a name, unless the teacher allowed it."""
    status, reply = post(classroom.url + "/join", registration(classroom, "mallory", url=url))
    host = urllib.parse.urlsplit(url).hostname.removeprefix("::ffff:")  # named as the IPv4 address it maps
    assert (status, reply["error"]) == (403, f"the function URL's host {host} is not the address you join from "
                                             "(127.0.0.1): run %fedless_join again without --host, or ask the "
                                             f"teacher to allow it (%fedless_classroom open --allow-host {host})")
    assert classroom.roster.rows() == []
    assert post(classroom.url + "/join", registration(classroom, "alice", url="http://[::1]:8080/"))[0] == 200


def test_the_teacher_bounds_the_examples_a_student_may_claim_as_their_own(tmp_path):
    """FedAvg weighs a student's own examples by their claim: the teacher sets how large it may be."""
    service = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"), max_own_examples=100)
    try:
        assert post(service.url + "/join", registration(service, "alice", own_examples=100))[0] == 200
        status, reply = post(service.url + "/join", registration(service, "mallory", own_examples=101))
        assert (status, reply["error"]) == (403, "own examples '101': train on 1 to 100 examples of your own (--data), "
                                                 "or none to get a share of the teacher's dataset")
    finally:
        service.close()
    with pytest.raises(ClassroomError, match="^--max-own-examples 0: give the most examples of their own a student"):
        ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"), max_own_examples=0)


def test_a_student_listening_on_every_address_registers_the_one_they_join_from(classroom):
    student = StudentFunction(classroom.url, classroom.code, "alice", host="0.0.0.0")
    try:
        assert student.url.startswith("http://127.0.0.1:")  # 0.0.0.0 as a destination is the teacher's own machine
        assert classroom.roster.students["alice"].url == student.url
    finally:
        student.leave()


def test_a_student_listening_on_every_address_of_the_other_family_is_told_which_host_to_give(classroom):
    """A student on `--host ::` (every IPv6 address only, as asyncio binds it) joining an IPv4 teacher registered an
    IPv4 URL where nothing listened: the join succeeded and every task of the run then failed to connect."""
    with pytest.raises(ClassroomError, match=r"^--host :: listens on every IPv6 address only, and 127.0.0.1 reaches "
                                             r"this machine over IPv4: use --host 0.0.0.0, or leave --host out$"):
        StudentFunction(classroom.url, classroom.code, "alice", host="::")
    with pytest.raises(ClassroomError, match=r"^--host 0.0.0.0 listens on every IPv4 address only, and ::1 reaches "
                                             r"this machine over IPv6: use --host ::, or leave --host out$"):
        StudentFunction("http://[::1]:9", "ABCDEF", "alice", host="0.0.0.0")
    assert classroom.roster.students == {}  # refused before joining: the roster holds no unreachable student


def test_the_teacher_allows_other_function_hosts_explicitly(tmp_path):
    service = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"),
                               allow_hosts=("10.0.0.0/8", "*.run.app", "fn.example.com", "2001:db8::/32"))
    try:
        admitted = ["http://10.1.2.3:8080/", "https://alice-7f3.a.run.app/", "https://FN.example.com./x",
                    "http://[2001:db8::5]:80/", "http://[::ffff:10.9.9.9]/"]
        for number, url in enumerate(admitted):
            assert post(service.url + "/join", registration(service, f"s{number}", url=url))[0] == 200, url
        for url in ["https://run.app/", "https://evilrun.app/", "http://192.168.1.2/", "https://example.com/"]:
            status, reply = post(service.url + "/join", registration(service, "mallory", url=url))
            assert status == 403 and reply["error"].startswith("the function URL's host"), url
    finally:
        service.close()
    with pytest.raises(ClassroomError, match=r"--allow-host 'http://x/': give a host name, \*.domain, an address"):
        ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"), allow_hosts=("http://x/",))


def test_a_registration_from_an_ipv4_mapped_address_names_its_ipv4_address():
    hosts = FunctionHosts()
    assert hosts.refusal("10.0.0.7", "::ffff:10.0.0.7") is None
    assert hosts.refusal("::ffff:10.0.0.7", "10.0.0.7") is None
    assert hosts.refusal("10.0.0.8", "::ffff:10.0.0.7") is not None


def _ipv6_loopback_refusal():
    """Why this machine cannot serve on IPv6 loopback, or None when it can."""
    if not socket.has_ipv6:
        return "this Python was built without IPv6 (socket.has_ipv6 is False)"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        return f"binding ::1 fails here ({error}): IPv6 is disabled on this machine's loopback"
    return None


@pytest.mark.skipif(_ipv6_loopback_refusal() is not None, reason=str(_ipv6_loopback_refusal()))
@pytest.mark.parametrize("host", ["::1", "::"])
def test_a_teacher_on_ipv6_shows_a_join_url_a_student_joins_and_is_called_through(tmp_path, host,
                                                                                   fresh_function_state):
    """The join URL wrote an IPv6 address without brackets (http://::1:8765, whose port reads as part of the
    address); listening on every IPv6 address (::) it showed an IPv4 one, where it does not listen."""
    service = ClassroomService(host, 0, code_minutes=5, store_root=str(tmp_path / "store"))
    student = None
    try:
        shown = urllib.parse.urlsplit(service.url)
        assert service.url.startswith("http://[") and ":" in shown.hostname and shown.port == service._server.port
        assert service.join_command().startswith(f"%fedless_join {service.url} ")
        student = StudentFunction(service.url, service.code, "alice")
        assert urllib.parse.urlsplit(student.url).hostname == shown.hostname  # the address it joined from
        store, spec = write_inputs(tmp_path / "store")  # the task's inputs and update go through [...] URLs too
        result = asyncio.run(service.providers()["alice"].invoke(served_task(service, store, spec, student._secret)))
        assert result["num_examples"] == 40 and [call.outcome for call in student.calls] == ["succeeded"]
    finally:
        if student is not None:
            student.leave()
        service.close()


def test_deeply_nested_json_is_refused_with_one_line(classroom):
    request = urllib.request.Request(classroom.url + "/join", data=b"[" * 4000, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403
    assert json.loads(refused.value.read())["error"] == "a classroom message is a JSON object of at most 4096 bytes"


def test_a_class_admits_a_bounded_number_of_names_and_remembers_nonces_only_while_they_could_be_replayed(
        classroom, monkeypatch):
    monkeypatch.setattr(roster, "CLASS_LIMIT", 3)
    for name in ("s1", "s2", "s3"):
        assert post(classroom.url + "/join", registration(classroom, name))[0] == 200
    status, reply = post(classroom.url + "/join", registration(classroom, "s4"))
    assert (status, reply["error"]) == (403, "the class is full (3 students): ask the teacher to open another one")
    assert len(classroom.provider_configs()) == 3
    later = time.time() + 3 * roster.REGISTRATION_WINDOW  # every registration above is too old to replay by then
    classroom.roster.code.expires_at = later + 60
    student = classroom.roster.students["s1"]
    classroom.roster.leave("s1", leave_proof(student.secret, "s1"))
    classroom.roster.register(registration(classroom, "s1", sent_at=later), "127.0.0.1", now=later)  # a name that
    # left comes back
    assert len(classroom.roster._nonces) == 1


def test_the_join_service_drops_slow_loris_connections_and_holds_a_bounded_number(tmp_path, monkeypatch):
    """A student opens connections and sends nothing, or trickles a request's headers or a join's body: each is
    closed after the idle limit (aiohttp's default kept them an hour), and connections past the limit are closed
    at once, so a flood cannot take the teacher's kernel's file descriptors. Students join again once it ends."""
    monkeypatch.setattr(server_thread, "IDLE_TIMEOUT", 1.0)
    monkeypatch.setattr(server_thread, "CONNECTION_LIMIT", 20)
    monkeypatch.setattr(service_module, "MESSAGE_SECONDS", 1.0)
    service = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"))
    host, port = "127.0.0.1", service._server.port
    try:
        silent = socket.create_connection((host, port))
        trickling = socket.create_connection((host, port))
        slow_body = socket.create_connection((host, port))
        slow_body.sendall(b"POST /join HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{")
        trickling.sendall(b"POST /join HTTP/1.1\r\nHost: x\r\n")
        with pytest.raises(OSError):  # the service closes it while its headers still trickle in
            for _ in range(20):
                time.sleep(0.5)
                trickling.sendall(b"X-Slow: 1\r\n")
        silent.settimeout(5)
        assert silent.recv(100) == b"", "the service closed it"
        slow_body.settimeout(5)
        assert b"the message did not arrive within 1 s" in slow_body.recv(1000)
        split = socket.create_connection((host, port))  # a join whose body arrives in two pieces is read whole
        body = json.dumps(registration(service, "bob")).encode()
        split.sendall(b"POST /join HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.3)
        split.sendall(body[10:])
        split.settimeout(5)
        assert split.recv(1000).startswith(b"HTTP/1.1 200")
        split.close()
        flood = [socket.create_connection((host, port)) for _ in range(100)]
        time.sleep(0.5)
        assert service._server.connections <= 20 + 2 * server_thread.ACCEPT_BACKLOG < len(flood)
        for connection in flood + [silent, trickling, slow_body]:
            connection.close()
        time.sleep(1.5)
        assert post(service.url + "/join", registration(service, "alice"))[0] == 200
    finally:
        service.close()


def test_a_students_function_drops_a_task_body_that_trickles(classroom, monkeypatch):
    """Anyone in the room may connect to a student's function: a body that trickled in after its headers held the
    connection (and what had arrived of up to 8 MiB) as long as it kept trickling, where the join service's messages
    are bounded. It is now answered 408 once TASK_SECONDS pass, and the function still serves the next call."""
    monkeypatch.setattr(student_module, "TASK_SECONDS", 1.0)
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        address = urllib.parse.urlsplit(student.url)
        slow_body = socket.create_connection((address.hostname, address.port))
        slow_body.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n{")
        slow_body.settimeout(0.2)
        answer = b""
        for _ in range(25):  # a byte every 0.2 s: never idle, never done
            try:
                answer += slow_body.recv(1000)
                if b"did not arrive" in answer:
                    break
            except socket.timeout:
                slow_body.sendall(b" ")
        slow_body.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"the task did not arrive within 1 s" in answer
        status, reply = post_body(student.url, b"[]")
        assert status == 400 and "not a task" in reply["error"]["message"]
    finally:
        student.leave()


def test_a_taken_name_and_a_bad_name_are_refused(classroom):
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        with pytest.raises(ClassroomError, match="the name 'alice' is taken in this class: choose another --name"):
            StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
        with pytest.raises(ClassroomError, match="--name 'Bob Smith': use 1-32 lowercase letters"):
            StudentFunction(classroom.url, classroom.code, "Bob Smith", host="127.0.0.1")
    finally:
        student.leave()


def test_a_name_with_a_trailing_newline_is_refused_not_shown_as_anothers(classroom):
    """A regex's `$` matches before a final newline: 'alice\n' joined beside alice, a second 'alice' on the teacher's
    roster (HTML and text collapse the newline), whose rows, removal and results the teacher could not tell apart."""
    assert post(classroom.url + "/join", registration(classroom, "alice"))[0] == 200
    status, reply = post(classroom.url + "/join", registration(classroom, "alice\n"))
    assert status == 403 and reply["error"] == "--name 'alice\\n': use 1-32 lowercase letters, digits, - or _, e.g. --name alice"
    assert [row["name"] for row in classroom.roster.rows()] == ["alice"]


def served_task(classroom, store, spec, secret):
    """A task of the classroom's: its inputs in the join service's store (`store`, on the same folder), reached
    through the URLs the service signs, with a token from `secret`."""
    task = make_task(store, spec, secret=None)
    task["store"] = classroom.store.task_descriptor([task["weights"], task["data"], task["update"]], [task["update"]],
                                                   task["deadline"])
    task["token"] = client_key(secret, task["run_id"], task["client_id"]).issue_token(task)
    return task


def test_a_task_signed_with_another_runs_key_is_refused_with_one_line(classroom, tmp_path, fresh_function_state):
    store, spec = write_inputs(tmp_path / "store")
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        foreign = served_task(classroom, store, spec, new_secret())  # another classroom's (another run's) key
        status, reply = post(student.url, foreign)
        assert status == 403
        assert reply["error"]["message"] == ("the task's token is forged or signed with another secret "
                                             "(check FEDLESS_RUN_SECRET)")
        assert not store.exists(foreign["update"])
        own = served_task(classroom, store, spec, student._secret)  # the teacher's key for alice
        status, reply = post(student.url, own)
        assert status == 200 and reply["num_examples"] == 40
        client_key(student._secret, own["run_id"], own["client_id"]).verify_result(reply, store.get(own["update"]))
        assert [(call.round, call.examples, call.outcome) for call in student.calls][-1] == (1, 40, "succeeded")
        assert student.calls[0].outcome.startswith("the task's token is forged")
    finally:
        student.leave()


def test_a_students_function_keeps_its_latest_calls_however_many_anyone_in_the_room_sends(classroom, tmp_path,
                                                                                        fresh_function_state):
    """Anyone in the room may call a student's function, and each call, refused ones too, was kept and redrew the
    student's table with all of them: a loop of forged tasks grew it without end. It keeps the latest CALLS_KEPT."""
    from fedless_nb.classroom.student import CALLS_KEPT

    store, spec = write_inputs(tmp_path / "store")
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        forged = json.dumps(served_task(classroom, store, spec, new_secret())).encode()
        for _ in range(CALLS_KEPT + 5):
            assert post_body(student.url, forged)[0] == 403
        own = served_task(classroom, store, spec, student._secret)
        assert post(student.url, own)[0] == 200
        assert len(student.calls) == CALLS_KEPT and len(student.rows()) == CALLS_KEPT
        assert student.calls[-1].outcome == "succeeded" and student.calls[0].outcome.startswith("the task's token is forged")
    finally:
        student.leave()


@pytest.mark.parametrize("round_number", ["x", [1], 1e309])
def test_a_task_whose_round_is_not_a_number_is_refused_in_one_line(classroom, tmp_path, round_number):
    """A refused task was logged with int() of its round: a round anyone in the room sends as text or a list failed
    the function's handler (HTTP 500 and aiohttp's page, not a reply). It is one refusal, listed as round 0."""
    store, spec = write_inputs(tmp_path / "store")
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        task = {**served_task(classroom, store, spec, new_secret()), "round": round_number}
        status, reply = post(student.url, task)
        assert status == 400 and reply["error"]["type"] == "PayloadError", reply
        assert [call.round for call in student.calls] == [0]
    finally:
        student.leave()


def test_a_teachers_custom_layer_is_refused_in_words_for_a_classroom_unless_the_student_allowed_its_module(
        classroom, tmp_path, fresh_function_state):
    """A student's function imports Keras's layers only: a teacher whose model had a custom layer was refused in a
    deployed function's words (FEDLESS_MODEL_MODULES 'where it is deployed'), nothing a classroom can act on. The
    refusal now names what the teacher can do, and a student who installed the module opts in when joining."""
    store, spec = write_custom_layer_inputs(tmp_path / "store")
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        task = served_task(classroom, store, spec, student._secret)
        status, reply = post(student.url, task)
        assert (status, reply["error"]["message"]) == (400, (
            "the model names module registered_layers, which this function does not import: a student's function "
            "imports Keras's layers and the modules the student allowed when joining: build the model from Keras's "
            "built-in layers, or have each student install registered_layers and join again with %fedless_join ... "
            "--model-module registered_layers"))
        assert not store.exists(task["update"])
    finally:
        student.leave()
    with pytest.raises(ClassroomError, match=r"^--model-module '\*': give the dotted name"):
        StudentFunction(classroom.url, classroom.code, "bob", host="127.0.0.1", model_modules=["*"])
    allowing = StudentFunction(classroom.url, classroom.code, "carol", host="127.0.0.1", model_modules=["registered_layers"])
    try:
        task = served_task(classroom, store, spec, allowing._secret)
        status, reply = post(allowing.url, task)
        assert status == 200 and reply["num_examples"] == 40 and store.exists(task["update"]), reply
    finally:
        allowing.leave()


@pytest.mark.parametrize("where", ["local", "elsewhere"])
def test_a_task_naming_the_students_files_or_other_services_is_refused_though_signed_with_their_key(
        classroom, tmp_path, fresh_function_state, where):
    """Whoever holds a student's key (the teacher, or someone who read it off the room's plain-HTTP network) could
    send their function a task with a local store: it read a folder of the student's machine as its data and wrote
    its update there, any folder the student's kernel can write; or with URLs signed elsewhere (here another join
    service, standing for any service of the student's machine or the room's), which the student's kernel called.
    A classroom task goes through the join service's own signed URLs only."""
    other = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "elsewhere"))
    store, spec = write_inputs(tmp_path / ("students-disk" if where == "local" else "elsewhere"))
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        task = (make_task(store, spec, secret=student._secret) if where == "local"  # {"kind": "local", "root": ...}
                else served_task(other, store, spec, student._secret))
        status, reply = post(student.url, task)
        found = "a 'local' store" if where == "local" else f"a URL elsewhere (127.0.0.1:{other._server.port})"
        assert (status, reply["error"]["message"]) == (400, "a classroom task reads and writes through the join "
                                                            f"service's signed URLs ({classroom.url}/store/...) only, "
                                                            f"not {found}")
        assert not store.exists(task["update"])
    finally:
        student.leave()
        other.close()


def test_a_task_cannot_make_a_students_function_read_their_files(classroom, tmp_path, fresh_function_state):
    """Whoever holds a student's key (the teacher) could send their function a model whose TF op layers read a file of
    the student's machine (io.read_file) into TensorFlow's error, which the reply carried; it is refused unbuilt."""
    store, _ = write_inputs(tmp_path / "store")
    private = tmp_path / "private.txt"
    private.write_text("private-line-42")
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        status, reply = post(student.url, served_task(classroom, store, reading_file(private), student._secret))
    finally:
        student.leave()
    assert "private-line-42" not in json.dumps(reply), reply
    assert status == 400 and reply["error"]["message"].startswith("the model's layer "), reply


def test_the_student_trains_on_their_own_data_which_never_enters_the_store(classroom, tmp_path, fresh_function_state):
    store, spec = write_inputs(tmp_path / "store")
    rng = np.random.default_rng(1)
    drawn = (rng.random((12, 8), dtype=np.float32), rng.integers(0, 3, 12))
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1", data=drawn)
    try:
        assert classroom.roster.rows()[0]["examples"] == 12
        config = ExperimentConfig.from_dict({"clients": 1, "providers": classroom.provider_configs()})
        assert classroom.run_options(config)["own_data_sizes"] == {"client-0000": 12}
        task = served_task(classroom, store, spec, student._secret)
        store.delete(task["data"])  # the task's data key is never read
        status, reply = post(student.url, task)
        assert status == 200 and reply["num_examples"] == 12
    finally:
        student.leave()


def test_a_student_who_leaves_as_the_run_starts_shifts_nobodys_figures(classroom):
    """The run's config lists the class (alice, bob with 60 examples of his own, carol); alice leaves before the run
    takes its functions and sizes: each client still gets its own student's function and example count (read by
    name, not by place among those present: bob's 60 went to client 0, alice's client, so that the controller
    refused both bob's and carol's results as claiming the wrong count, every round)."""
    drawn = (np.zeros((60, 64), dtype=np.float32), np.zeros(60, dtype=np.int64))
    alice, bob, carol = (StudentFunction(classroom.url, classroom.code, name, host="127.0.0.1", data=data)
                         for name, data in (("alice", None), ("bob", drawn), ("carol", None)))
    config = ExperimentConfig.from_dict({"clients": 3, "providers": classroom.provider_configs()})
    alice.leave()
    try:
        options = classroom.run_options(config)
        assert options["own_data_sizes"] == {"client-0001": 60}
        assert {name: provider.url for name, provider in options["providers"].items()} == {
            "alice": alice.url, "bob": bob.url, "carol": carol.url}
        assert options["store"] is classroom.store
    finally:
        bob.leave()
        carol.leave()


def test_the_served_store_grants_exactly_the_signed_keys(classroom):
    classroom.store.put("runs/r/global-0.weights", encode_arrays([np.ones(3, np.float32)]))
    descriptor = classroom.store.task_descriptor(["runs/r/global-0.weights"], ["runs/r/update"], time.time() + 60,
                                                 max_write_bytes=8)
    remote = PresignedStore.from_descriptor(descriptor)
    assert decode_arrays(remote.get("runs/r/global-0.weights"))[0].tolist() == [1, 1, 1]
    remote.put("runs/r/update", b"8 bytes!")
    assert classroom.store.get("runs/r/update") == b"8 bytes!"
    # a function that skips its own size check is refused by the service, and cannot sign itself a larger limit
    unchecked = PresignedStore.from_descriptor({**descriptor, "max_write_bytes": None})
    with pytest.raises(StoreError, match="HTTP 400 EntityTooLarge"):
        unchecked.put("runs/r/update", b"nine bytes")
    widened = {**descriptor, "post": {"runs/r/update": {"url": descriptor["post"]["runs/r/update"]["url"].replace(
        "limit=8", "limit=800"), "fields": {}}}, "max_write_bytes": None}
    with pytest.raises(StoreError, match="HTTP 403"):
        PresignedStore.from_descriptor(widened).put("runs/r/update", b"nine bytes")
    assert classroom.store.get("runs/r/update") == b"8 bytes!"
    forged = descriptor["get"]["runs/r/global-0.weights"].replace("global-0", "global-1")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=10)
    assert refused.value.code == 403 and refused.value.read() == b"the URL was not signed for GET runs/r/global-1.weights"
    expired = classroom.store.signed_url("GET", "runs/r/global-0.weights", time.time() - 10)
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(expired, timeout=10)


def _start_upload(url, body_bytes, sent):
    """A multipart upload to the signed `url` that announces `body_bytes` of file and sends only `sent` of them."""
    parts = urllib.parse.urlsplit(url)
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="u"\r\n\r\n'
    length = len(head) + body_bytes + len(b"\r\n--b--\r\n")
    connection = socket.create_connection((parts.hostname, parts.port))
    connection.sendall(f"POST {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                       "Content-Type: multipart/form-data; boundary=b\r\n\r\n".encode() + head + b"x" * sent)
    connection.settimeout(10)
    return connection


def test_one_upload_per_key_at_a_time_and_none_past_its_urls_deadline(classroom):
    """A student holding their upload URL opens many uploads at once: each would buffer up to the URL's limit in
    the teacher's kernel, so a second one to the same key is refused while the first lasts; and a slow upload
    ends with its URL's deadline instead of holding its connection and buffer."""
    url = classroom.store.signed_url("POST", "runs/r/update", time.time() + 2, max_bytes=2**20)
    slow = _start_upload(url, 2**20, 1000)
    time.sleep(0.3)
    second = _start_upload(url, 10, 10)
    assert second.recv(1000).split(b"\r\n")[0] == b"HTTP/1.1 409 Conflict"
    assert slow.recv(1000).split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout"
    assert not classroom.store.exists("runs/r/update")
    later = classroom.store.signed_url("POST", "runs/r/update", time.time() + 60, max_bytes=2**20)
    PresignedStore.from_descriptor({"kind": "presigned", "expires_at": time.time() + 60, "max_write_bytes": 2**20,
                                    "get": {}, "post": {"runs/r/update": {"url": later, "fields": {}}}}).put(
        "runs/r/update", b"whole")
    assert classroom.store.get("runs/r/update") == b"whole"
    slow.close(), second.close()


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_reader_that_never_reads_holds_a_connection_not_a_copy_of_the_model(tmp_path):
    """A student asks for the global model on many connections and reads none: the service streams the key from
    disk, so the teacher's kernel holds no copy per connection (it held the body per connection: 30 readers
    of an 8 MiB model grew it by 377 MiB here). The per-address limit is off: 30 readers from 127.0.0.1 stand for
    readers on many machines."""
    classroom = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"), per_address=0)
    try:
        _read_nothing_on_many_connections(classroom)
    finally:
        classroom.close()


def _read_nothing_on_many_connections(classroom):
    classroom.store.put("runs/r/global.weights", os.urandom(8 * 2**20))
    url = urllib.parse.urlsplit(classroom.store.signed_url("GET", "runs/r/global.weights", time.time() + 60))
    before = _resident_bytes()
    readers = []
    for _ in range(30):
        reader = socket.create_connection((url.hostname, url.port))
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.sendall(f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        readers.append(reader)
    time.sleep(2)
    grown = _resident_bytes() - before
    for reader in readers:
        reader.close()
    assert grown < 64 * 2**20, f"the service holds {grown / 2**20:.0f} MiB for 30 readers that never read"
    with urllib.request.urlopen(urllib.parse.urlunsplit(url), timeout=30) as response:  # a reader gets it whole
        assert response.read() == classroom.store.get("runs/r/global.weights")


def test_a_students_function_parses_a_large_body_only_once_its_token_checks(classroom):
    """Parsing costs many times a body's size; a student's function, reachable by anyone in the room, refuses a body
    over 1 MiB whose text carries no token of its key (401) or a forged one (403) before parsing it."""
    from fedless_nb.function.serving import PARSED_UNSIGNED_BYTES

    student = StudentFunction(classroom.url, classroom.code, "alice")
    try:
        objects = b"[" + b"{}," * (PARSED_UNSIGNED_BYTES // 3 + 8) + b"{}]"
        status, reply = student._invoke(objects)
        assert (status, reply["error"]["message"]) == (401, "the task has no token; this function accepts signed tasks only")
        claims = base64.urlsafe_b64encode(json.dumps({"run_id": "r", "client_id": "alice"}).encode()).rstrip(b"=")
        token = b"v1." + claims + b"." + base64.urlsafe_b64encode(bytes(32)).rstrip(b"=")
        forged = b'{"token": "' + token + b'", "pad": "' + b" " * PARSED_UNSIGNED_BYTES + b'"}'
        status, reply = student._invoke(forged)
        assert status == 403 and "forged" in reply["error"]["message"]
        assert student.calls == []  # refused unparsed: no task was logged as a call
    finally:
        student.leave()


def test_a_students_function_parses_a_large_task_once_and_no_body_its_token_was_not_issued_for(
        classroom, tmp_path, fresh_function_state, monkeypatch):
    """A body over 1 MiB whose token checked was parsed before its nonce and task digest were: the same body again (a
    replay) or another body carrying a valid token cost the function a parse of up to 64 MiB each. Both are refused
    unparsed now (the token's nonce is looked up, and its digest compared with the body's text as the controller sends
    it); the task itself, large by its architecture, is parsed once and trains."""
    from fedless_nb.function.serving import PARSED_UNSIGNED_BYTES
    from fedless_nb.security import canonical

    store, spec = write_inputs(tmp_path / "store")
    large = type(spec)(spec.architecture + " " * PARSED_UNSIGNED_BYTES, spec.compile, spec.modules)
    real_loads, parsed = json.loads, []

    def counting_loads(text, *args, **kwargs):
        if isinstance(text, (bytes, bytearray)) and len(text) > PARSED_UNSIGNED_BYTES:
            parsed.append(len(text))
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting_loads)
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        body = canonical(served_task(classroom, store, large, student._secret))
        status, reply = post_body(student.url, body)
        assert status == 200 and reply["num_examples"] == 40 and len(parsed) == 1, reply
        status, reply = post_body(student.url, body)
        assert (status, reply["error"]["message"]) == (403, "the task's token was already used: a replayed invocation")
        other = canonical(served_task(classroom, store, spec, student._secret))  # a small task's unspent token
        status, reply = post_body(student.url, other[:-1] + b',"zz":"' + b" " * PARSED_UNSIGNED_BYTES + b'"}')
        assert status == 403 and reply["error"]["message"].startswith("the task's token was issued for another task")
        assert len(parsed) == 1, "a body was parsed before its token's nonce and digest were checked"
    finally:
        student.leave()


def test_a_students_function_answers_a_body_nested_past_pythons_stack_in_one_line(classroom):
    """Anyone in the room can reach a student's function: a body of 100,000 opening brackets (under 1 MiB, so parsed)
    raised a RecursionError that escaped its checks (a 500 and a traceback in the student's kernel). One line now."""
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        status, reply = post_body(student.url, b"[" * 100_000)
        assert (status, reply["error"]["message"]) == (400, "the request body nests too deeply to be a task"), reply
    finally:
        student.leave()


def test_a_students_oversized_reply_is_refused_unparsed(classroom):
    """A student's function answers with 2 MiB of JSON: a result is a few KB, and parsing a reply costs the teacher's
    kernel several times its size (a 64 MiB one, the HTTP provider's own limit, about 0.5 GB), once per name a
    student joined under; the class's providers (HTTP providers, which read at most 1 MiB of a client step's reply)
    refuse it as that invocation's failure."""
    async def bloated(request):
        return web.Response(body=b"[" + b"0," * 2**20 + b"0]", content_type="application/json")

    async def call():
        async with serving(web.post("/", bloated)) as url:
            assert post(classroom.url + "/join", registration(classroom, "mallory", url=url + "/"))[0] == 200
            provider = classroom.providers()["mallory"]
            try:
                await provider.invoke({"task": 1})
            finally:
                await provider.close()

    with pytest.raises(InvocationError, match=f"the reply exceeded {2**20} bytes") as refused:
        asyncio.run(call())
    assert refused.value.cause == "invalid"


def test_the_comparison_with_the_class_average():
    start = [np.zeros(2)]
    assert compare_with_class(start, [np.array([2.0, 0.0])], [np.array([1.0, 0.0])]) == \
        "cosine 1.00 with the class average, 2.0x its size"
    assert compare_with_class(start, [np.array([0.0, 1.0])], [np.array([1.0, 0.0])]).startswith("cosine 0.00")


def test_a_student_who_left_is_a_failed_invocation_not_a_stuck_call(classroom, tmp_path):
    import asyncio

    from fedless_nb.providers.base import InvocationError

    store, spec = write_inputs(tmp_path / "student-store")
    student = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    provider = classroom.providers()["alice"]  # what a run holds from its start
    student.leave()

    async def call():
        try:
            return await provider.invoke(make_task(store, spec, secret=student._secret))
        finally:
            await provider.close()

    with pytest.raises(InvocationError, match=r"cannot reach http://127\.0\.0\.1:\d+/: ClientConnectorError"):
        asyncio.run(call())


def test_joining_under_a_name_that_left_gives_another_key(classroom, tmp_path):
    """A name is free again once its student has left; whoever takes it gets a key of their own, so the
    tasks and results of the student who left cannot be signed or checked with it."""
    first = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    first.leave()
    second = StudentFunction(classroom.url, classroom.code, "alice", host="127.0.0.1")
    try:
        assert second._secret != first._secret and classroom.roster.students["alice"].secret == second._secret
        with pytest.raises(ClassroomError, match="no student 'alice' with that key in this class"):
            classroom.roster.leave("alice", leave_proof(first._secret, "alice"))
        assert [(row["name"], row["status"]) for row in classroom.roster.rows()] == [("alice", "joined")]
    finally:
        second.leave()

def test_the_drawing_pad_keeps_labelled_8x8_examples_in_the_digits_format():
    from fedless_nb.classroom.drawing import DrawingPad

    pad = DrawingPad()
    assert pad.data()[0].shape == (0, 64)
    for index in (3, 11, 19):
        pad.cells[index].value = True
    assert pad.cells[3].button_style == "info"
    pad.label.value = 7
    pad.add_drawing()
    x, y = pad.data()
    assert x.shape == (1, 64) and x.dtype == np.float32 and set(np.flatnonzero(x[0])) == {3, 11, 19}
    assert y.tolist() == [7] and not any(cell.value for cell in pad.cells)
    assert pad.count.value == "1 examples drawn (7: 1)" and repr(pad) == "DrawingPad(1 examples drawn (7: 1))"


def _join_from(service, address, name, **fields):
    """POST /join from the source `address` (a 127.0.0.0/8 address: another machine of the room, on loopback):
    status, body, Retry-After."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", service._server.port, timeout=10, source_address=(address, 0))
    try:
        connection.request("POST", "/join", json.dumps(registration(service, name, **fields)),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read().decode(), response.getheader("Retry-After")
    finally:
        connection.close()


def test_wrong_join_codes_are_bounded_per_address_and_in_all_without_locking_the_class_out(classroom):
    """Someone guessing the join code (32^6 codes, valid 30 minutes) had as many tries as the service could answer.
    Now an address spends 10 wrong codes, then waits (429, one line, its code not even looked at, the right one
    included); all addresses together spend 30 a minute, but an address a student joined from is held to its own
    budget only; a class behind one address, mistyping 8 times, all joins, and can still mistype once."""
    wrong = {"code": "WRONG2"}
    for _ in range(10):
        assert _join_from(classroom, "127.0.0.2", "mallory", **wrong)[0] == 403
    for fields in (wrong, {}):  # the right code too: looking at it would let the guessing go on
        status, text, retry_after = _join_from(classroom, "127.0.0.2", "mallory", **fields)
        assert status == 429 and retry_after is not None and 1 <= int(retry_after) <= 7
        assert json.loads(text)["error"] == (f"too many wrong join codes: try again in {retry_after} s, with the code "
                                             "shown on the teacher's screen")
    for _ in range(8):  # a class behind one address mistypes, and every student joins
        assert _join_from(classroom, "127.0.0.3", "typo", **wrong)[0] == 403
    for student in range(30):
        assert _join_from(classroom, "127.0.0.3", f"s{student}")[0] == 200
    for address in ("127.0.0.4", "127.0.0.5"):  # 30 wrong codes from fresh addresses in all: the overall budget
        for _ in range(10):
            assert _join_from(classroom, address, "mallory", **wrong)[0] in (403, 429)
    assert _join_from(classroom, "127.0.0.6", "dave")[0] == 429  # a fresh address waits too
    assert _join_from(classroom, "127.0.0.3", "typo", **wrong)[0] == 403  # the class's address still tries codes
    assert _join_from(classroom, "127.0.0.3", "carol")[0] == 200
    a_minute_later = time.time() + 60  # the budgets refill
    classroom.roster.register(registration(classroom, "mallory"), "127.0.0.2", now=a_minute_later)
    classroom.roster.register(registration(classroom, "dave"), "127.0.0.6", now=a_minute_later)


def test_an_ipv6_network_spends_one_addresss_wrong_codes_however_many_addresses_it_uses():
    """Wrong codes were counted per address, and whoever holds an IPv6 /64 has 2^64 of them: each fresh one got 10
    guesses, so one machine spent the whole overall budget and kept every student not joined yet waiting. An IPv6
    address now counts as its /64 (a class on one such network is one address, as behind a NAT); IPv4-mapped
    addresses stay their IPv4 ones, never one ::ffff:0:0/64 for every IPv4 client."""
    from fedless_nb.classroom.join_limit import TooManyWrongCodes, WrongCodes

    codes, now = WrongCodes(), time.time()
    for host in range(10):
        codes.check(f"2001:db8:1:2::{host + 1:x}", now)
        codes.spend(f"2001:db8:1:2::{host + 1:x}", now)
    with pytest.raises(TooManyWrongCodes, match="^too many wrong join codes: try again in 7 s"):
        codes.check("2001:db8:1:2:abcd::99", now)  # a fresh address of the same /64
    codes.check("2001:db8:1:3::1", now)  # another network still tries: the overall budget has 20 left
    for address in ("::ffff:192.0.2.1", "192.0.2.1") * 5:  # one IPv4 address, however it is written
        codes.spend(address, now)
    with pytest.raises(TooManyWrongCodes):
        codes.check("192.0.2.1", now)
    codes.check("::ffff:192.0.2.2", now)  # another IPv4 address: its own budget (the overall one has 10 left)
    codes.joined("2001:db8:5:6::1")  # a student of a class on 2001:db8:5:6::/64 joined
    for _ in range(10):
        codes.spend("2001:db8:ff:ff::1", now)  # the overall budget is spent...
    codes.check("2001:db8:5:6::77", now)  # ...but not by the class's network, whose classmates still join


def test_one_address_holds_a_bounded_number_of_connections_and_the_rest_of_the_class_still_joins(tmp_path,
                                                                                                 monkeypatch):
    """One student's machine opens as many connections as the server holds and keeps them: past the per-address limit
    each is answered 429 with one line and closed, so a student from another address still joins; with the limit off
    (0: a class behind one address) the same machine is served past it. It used to take all the server's connections
    (256; 8 here) and lock the class out."""
    monkeypatch.setattr(server_thread, "CONNECTION_LIMIT", 8)
    service = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"), per_address=4)
    held = [socket.create_connection(("127.0.0.1", service._server.port)) for _ in range(8)]
    try:
        time.sleep(0.3)
        status, text, _ = _join_from(service, "127.0.0.1", "mallory")
        assert (status, text) == (429, "more than 4 connections from your address: close some and try again "
                                       "(a class behind one address: the teacher raises --per-address)")
        assert _join_from(service, "127.0.0.2", "alice")[0] == 200
        assert [row["name"] for row in service.roster.rows()] == ["alice"]
    finally:
        for connection in held:
            connection.close()
        service.close()

    unlimited = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"), per_address=0)
    held = [socket.create_connection(("127.0.0.1", unlimited._server.port)) for _ in range(6)]
    try:
        time.sleep(0.3)
        assert _join_from(unlimited, "127.0.0.1", "bob")[0] == 200
        assert unlimited._server.connections >= 6
    finally:
        for connection in held:
            connection.close()
        unlimited.close()
    with pytest.raises(ClassroomError, match="--per-address -1: give the connections one address may hold"):
        ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"), per_address=-1)


def test_a_removed_student_cannot_join_again_under_another_name(classroom):
    """Removing bob renews the join code (its expiry unchanged), which the teacher's widget shows: bob's code no longer
    admits any name, alice stays in with her key, and a classmate joins with the new code."""
    from fedless_nb.classroom.widgets import roster_table

    table = roster_table(classroom)
    alice, bob = (StudentFunction(classroom.url, classroom.code, name, host="127.0.0.1") for name in ("alice", "bob"))
    old_code, expires_at = classroom.code, classroom.roster.code.expires_at
    classroom.remove("bob")
    carol = None
    try:
        assert classroom.code != old_code and classroom.roster.code.expires_at == expires_at
        assert classroom.code in table.widget.value and classroom.join_command() in table.text()
        assert old_code not in table.widget.value
        with pytest.raises(ClassroomError, match="^the teacher refused: wrong join code: copy the code shown on the "):
            StudentFunction(classroom.url, old_code, "bob2", host="127.0.0.1")
        assert classroom.roster.admits("alice", alice._secret)
        carol = StudentFunction(classroom.url, classroom.code, "carol", host="127.0.0.1")
        assert [s.name for s in classroom.roster.present()] == ["alice", "carol"]
    finally:
        for student in (alice, carol):
            if student is not None:
                student.leave()


def test_a_secure_round_over_the_class_seals_each_students_keys_with_a_secret_the_teacher_never_sees(classroom, tmp_path):
    """Three students' kernels each keep a state secret in memory: a secure round over them finishes, and each
    student's sealed keys open under that secret alone, not under what the teacher holds for the student."""
    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment

    students = {name: StudentFunction(classroom.url, classroom.code, name, host="127.0.0.1")
                for name in ("alice", "bob", "carol")}
    config = ExperimentConfig.from_dict({
        "name": "secure-class", "clients": 3, "clients_per_round": 3, "rounds": 1, "retries": 0, "max_norm_ratio": 0,
        "secure_aggregation": {}, "data": {"dataset": "digits"}, "model": {"builder": "logistic_regression"},
        "train": {"epochs": 1, "batch_size": 32, "learning_rate": 0.05},
        "history": str(tmp_path / "history.db"), "store": {"path": str(tmp_path / "unused")},
        "providers": classroom.provider_configs()})
    try:
        providers = classroom.providers()
        result = run_experiment(config, providers=providers, store=classroom.store)
        assert result.status == "finished"
        calls = {(i["provider"], i["client_id"]) for i in History(config.history).invocations(result.run_id)}
        assert {provider for provider, _ in calls} == set(students) and len(calls) == 3
        for name, client in calls:
            teachers_key = client_key(providers[name].secret, result.run_id, client)
            assert_sealed_for_the_function_alone(classroom.store, result.run_id, client, teachers_key,
                                                 students[name]._state_secret, [providers[name].secret])
    finally:
        for student in students.values():
            student.leave()


def test_the_teacher_removes_a_student_whose_next_result_and_rejoin_are_refused(classroom, tmp_path):
    """The teacher removes bob after round 1 of a run over the class: his result in round 2 is refused (the run goes
    on with alice), what he gave in round 1 stays, the roster and its widget say so, and bob can neither join again
    under his name nor leave with his old key."""
    from fedless_nb.classroom.widgets import roster_table
    from fedless_nb.records.history import History
    from fedless_nb.rounds.events import RoundFinished
    from fedless_nb.runner import run_experiment

    students = [StudentFunction(classroom.url, classroom.code, name, host="127.0.0.1") for name in ("alice", "bob")]
    table = roster_table(classroom)
    config = ExperimentConfig.from_dict({
        "name": "removal", "clients": 2, "clients_per_round": 2, "rounds": 2, "retries": 0, "min_successful": 1,
        "data": {"dataset": "digits"}, "model": {"builder": "logistic_regression"},
        "train": {"epochs": 1, "batch_size": 32, "learning_rate": 0.05},
        "history": str(tmp_path / "history.db"), "store": {"path": str(tmp_path / "unused")},
        "providers": classroom.provider_configs()})

    def remove_bob_after_round_one(event):
        if isinstance(event, RoundFinished) and event.round == 1:
            classroom.remove("bob")

    try:
        result = run_experiment(config, providers=classroom.providers(), store=classroom.store,
                                observers=[classroom.observe, remove_bob_after_round_one])
        assert result.status == "finished"
        history = History(config.history)
        outcomes = [(i["round"], i["provider"], i["outcome"]) for i in history.invocations(result.run_id)]
        assert sorted(outcomes) == [(1, "alice", "succeeded"), (1, "bob", "succeeded"),
                                    (2, "alice", "succeeded"), (2, "bob", "failed")]
        refused = next(i for i in history.invocations(result.run_id) if i["outcome"] == "failed")
        assert refused["error"].startswith("the teacher removed bob from the class")
        assert [r["succeeded"] for r in history.rounds(result.run_id)] == [2, 1]  # round 1 keeps bob's update

        assert [(row["name"], row["status"]) for row in classroom.roster.rows()] == [("alice", "joined"),
                                                                                     ("bob", "removed")]
        assert "removed" in table.widget.value and "removed" in table.text()
        assert [s.name for s in classroom.roster.present()] == ["alice"]
        status, reply = post(classroom.url + "/join", registration(classroom, "bob"))
        assert (status, reply) == (403, {"error": "the teacher removed 'bob' from this class: ask the teacher"})
        with pytest.raises(ClassroomError, match="the teacher removed 'bob' from this class"):
            students[1].leave()
        with pytest.raises(ClassroomError, match="no student 'nobody' in this class: the roster lists the names"):
            classroom.remove("nobody")
    finally:
        students[0].leave()


def test_the_roster_shows_each_names_address_as_counted_and_how_many_names_it_holds(classroom):
    """Anyone holding the join code registered names from one machine that the teacher's roster showed as classmates.
    Each row now shows the address its name joined from (an IPv6 one as its /64, which one machine holds whole; an
    IPv4-mapped one as its IPv4 one) and how many names that address holds, in the widget and its text; a name the
    teacher removed no longer counts."""
    from fedless_nb.classroom.widgets import roster_table

    table = roster_table(classroom)
    for name in ("mallory1", "mallory2", "mallory3"):
        assert _join_from(classroom, "127.0.0.2", name)[0] == 200
    assert _join_from(classroom, "127.0.0.3", "alice")[0] == 200
    for name, address, url in (("bob", "2001:db8:1:2::5", "http://[2001:db8:1:2::5]:8080/"),
                               ("carol", "2001:db8:1:2:abcd::9", "http://[2001:db8:1:2:abcd::9]:8080/"),
                               ("dave", "::ffff:127.0.0.3", "http://127.0.0.3:8080/")):
        classroom.roster.register(registration(classroom, name, url=url), address)
    shown = {row["name"]: (row["address"], row["names from it"]) for row in classroom.roster.rows()}
    assert shown == {"mallory1": ("127.0.0.2", 3), "mallory2": ("127.0.0.2", 3), "mallory3": ("127.0.0.2", 3),
                     "alice": ("127.0.0.3", 2), "dave": ("127.0.0.3", 2),
                     "bob": ("2001:db8:1:2::/64", 2), "carol": ("2001:db8:1:2::/64", 2)}
    assert "<th>names from it</th>" in table.widget.value and "2001:db8:1:2::/64" in table.widget.value
    assert "names from it" in table.text().splitlines()[1] and "127.0.0.2" in table.text()
    classroom.remove("mallory1")
    assert [row["names from it"] for row in classroom.roster.rows()][:3] == [2, 2, 2]
    assert ">2</td>" in table.widget.value and ">3</td>" not in table.widget.value


def test_the_teacher_limits_the_names_one_address_registers_and_sees_the_refusals(tmp_path):
    """One person holding the join code registered up to 200 names from one address, each claiming up to 10,000
    examples: the class filled, and FedAvg weighed them, as one student wished. With names_per_address (opt-in: a
    class behind one NAT address is one address) the (n+1)-th name from an address is refused in one line that says
    to ask the teacher, whose roster counts it and names the address; another address still joins; a name that left
    joins again from there (a reconnect) and still holds its place, and one the teacher removed frees it; the teacher
    may lift (or change) the limit while the class is open."""
    from fedless_nb.classroom.widgets import roster_table

    service = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"), names_per_address=2)
    table = roster_table(service)
    try:
        assert "At most 2 names per address (none refused)." in table.text()
        for name in ("mallory1", "mallory2"):
            assert _join_from(service, "127.0.0.2", name)[0] == 200
        status, text, _ = _join_from(service, "127.0.0.2", "mallory3")
        assert (status, json.loads(text)["error"]) == (403, "this class admits at most 2 names from one address, and "
                                                            "yours (127.0.0.2) has them: ask the teacher")
        assert "At most 2 names per address (1 registration refused, the latest from 127.0.0.2)." in table.text()
        assert "the latest from 127.0.0.2" in table.widget.value
        assert _join_from(service, "127.0.0.3", "alice")[0] == 200  # another address
        mallory1 = service.roster.students["mallory1"]
        service.roster.leave("mallory1", leave_proof(mallory1.secret, "mallory1"))
        assert _join_from(service, "127.0.0.2", "mallory3")[0] == 403  # a name that left holds its place...
        assert _join_from(service, "127.0.0.2", "mallory1")[0] == 200  # ...and is no new name when it comes back
        service.remove("mallory2")
        assert _join_from(service, "127.0.0.2", "mallory3")[0] == 200  # a removed name frees its place
        assert [(row["name"], row["status"]) for row in service.roster.rows()] == [
            ("mallory2", "removed"), ("alice", "joined"), ("mallory1", "joined"), ("mallory3", "joined")]
        assert "2 registrations refused, the latest from 127.0.0.2" in table.text()
        assert _join_from(service, "127.0.0.2", "mallory4")[0] == 403
        service.names_per_address = 0  # the class turns out to be behind one address: the teacher lifts the limit
        assert "At most" not in table.text() and "At most" not in table.widget.value and service.names_per_address == 0
        assert _join_from(service, "127.0.0.2", "mallory4")[0] == 200
        with pytest.raises(ClassroomError, match=r"^--names-per-address -1: give the most names"):
            service.names_per_address = -1
        assert service.names_per_address == 0
    finally:
        service.close()


def test_the_names_per_address_count_an_ipv6_network_as_one_address(tmp_path):
    """An IPv6 address counts as its /64, which one machine holds whole (a fresh address of it would be a fresh
    budget of names); an IPv4-mapped address as its IPv4 one."""
    service = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"), names_per_address=1)
    try:
        def join(name, address, host):
            service.roster.register(registration(service, name, url=f"http://{host}:8080/"), address)

        join("bob", "2001:db8:1:2::5", "[2001:db8:1:2::5]")
        with pytest.raises(ClassroomError, match=r"^this class admits at most 1 name from one address, and yours "
                                                 r"\(2001:db8:1:2::/64\) has them: ask the teacher$"):
            join("mallory", "2001:db8:1:2:abcd::9", "[2001:db8:1:2:abcd::9]")
        join("carol", "2001:db8:1:3::5", "[2001:db8:1:3::5]")  # another network
        join("dave", "::ffff:192.0.2.7", "192.0.2.7")
        with pytest.raises(ClassroomError, match=r"yours \(192\.0\.2\.7\) has them"):
            join("erin", "192.0.2.7", "192.0.2.7")
        assert sorted(service.roster.students) == ["bob", "carol", "dave"]
    finally:
        service.close()


def test_a_students_key_is_in_no_repr_the_teachers_notebook_shows(tmp_path):
    """The teacher's notebook is on the projector: a cell showing the roster's students (classroom.roster.present())
    printed each student's key, with which anyone in the room could sign tasks to their function or leave for them."""
    service = ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"))
    try:
        student = service.roster.register(registration(service, "bob"), "127.0.0.1")
        shown = repr(service.roster.present())
        assert "name='bob'" in shown and student.secret not in shown, shown
    finally:
        service.close()


@pytest.mark.parametrize("value", [-1, 2.5, "3", None])
def test_a_names_per_address_that_is_no_count_is_refused_in_one_line(tmp_path, value):
    with pytest.raises(ClassroomError) as refused:
        ClassroomService("127.0.0.1", 0, code_minutes=5, store_root=str(tmp_path / "store"), names_per_address=value)
    assert str(refused.value) == (f"--names-per-address {value}: give the most names students may register from one "
                                  "address (0: no limit, for a class behind one address)")
