"""A live classroom in real kernels: a teacher and three students, each a Jupyter kernel, over 127.0.0.1 ports.

The machine has no separate network namespaces to give each kernel, so every server binds
127.0.0.1 on its own port; the join flow, the signed tasks and the signed store URLs are the
ones a room's network would carry.
"""

import json

import pytest
from jupyter_client.manager import KernelManager

from fedless_nb.records.history import History

from ports import kernel_ports
from test_kernel import Kernel, kernel_environment

STUDENTS = ("alice", "bob", "carol")
ROUNDS = 5
# run in the teacher's kernel right after the background run starts: the first RoundFinished from round 2 on
# blocks the run loop (observers are called on it) until `release` is set; the teacher's join service has a
# thread of its own, so students can still leave meanwhile
HOLD_AFTER_ROUND_TWO = """\
import threading
held, held_at, release = [], threading.Event(), threading.Event()
def hold(event):
    if type(event).__name__ == "RoundFinished" and event.round >= 2 and not held:
        held.append(event.round)
        held_at.set()
        release.wait(600)
run.controller.subscribe(hold)
"""


def start_kernel(directory):
    directory.mkdir()
    manager = KernelManager(kernel_name="python3", **kernel_ports())
    manager.start_kernel(cwd=str(directory), env=kernel_environment())
    kernel = Kernel(manager)
    kernel.run("%load_ext fedless_nb")
    return kernel


@pytest.fixture
def room(tmp_path):
    kernels = {}
    try:
        for name in ("teacher", *STUDENTS):
            kernels[name] = start_kernel(tmp_path / name)
        yield kernels
    finally:
        for kernel in kernels.values():
            kernel.shutdown()


@pytest.mark.slow
def test_three_student_kernels_train_five_rounds_and_one_leaves(room, tmp_path):
    teacher = room["teacher"]
    opened = teacher.run("classroom = %fedless_classroom open --host 127.0.0.1 --port 0 --timeout 120 "
                         "--allow-host '*.run.app' --allow-host 10.0.0.0/8 --max-own-examples 100 "
                         "--names-per-address 3\n"
                         "print(classroom.roster.hosts.suffixes, [str(n) for n in classroom.roster.hosts.networks], "
                         "classroom.roster.max_own_examples, classroom.names_per_address)\n"
                         "print(classroom.url, classroom.code)")
    # carol's 60 examples are within the bound; the three students, all on 127.0.0.1 here, within the names' limit
    assert opened.splitlines()[-2] == "('.run.app',) ['10.0.0.0/8'] 100 3"
    url, code = opened.splitlines()[-1].split()
    # carol trains on examples of her own (60 digits she holds), which never enter any store
    room["carol"].run("from sklearn.datasets import load_digits\ndigits = load_digits()\n"
                      "mine = ((digits.data[:60] / 16).astype('float32'), digits.target[:60])")
    for name in STUDENTS:
        own = " --data mine" if name == "carol" else ""
        joined = room[name].run(f"student = %fedless_join {url} {code} --name {name} --host 127.0.0.1{own}")
        assert joined.startswith(f"Joined as {name}; your function listens at http://127.0.0.1:")
    assert teacher.run("print([row['name'] for row in classroom.roster.rows()])") == str(list(STUDENTS))

    teacher.run(f"run = %fedless_train --provider classroom --dataset digits --builder logistic_regression "
                f"--rounds {ROUNDS} --epochs 1 --batch-size 32 --lr 0.05 --round-deadline 120 --dashboard none "
                "--background")
    # the run holds after its second round (an observer on the run loop waits) while bob leaves, so the rounds
    # before and after his leaving are known however fast or slow the machine runs them
    teacher.run(HOLD_AFTER_ROUND_TWO)
    held = int(teacher.run("assert held_at.wait(600), 'the run never finished round 2'\nprint(held[0])", timeout=660))
    assert room["bob"].run("%fedless_leave") == "bob left the class"
    teacher.run("release.set()\nresult = run.future.result(timeout=900)\nprint(result.status)", timeout=960)

    history = History(tmp_path / "teacher" / "fedless_history.db")
    run_id = teacher.run("print(result.run_id)")
    answered, examples = {}, {}
    for row in history.invocations(run_id):
        if row["outcome"] == "succeeded":
            answered.setdefault(row["round"], set()).add(row["provider"])
            examples.setdefault(row["provider"], set()).add(row["num_examples"])
    failed = {(row["round"], row["provider"]) for row in history.invocations(run_id) if row["outcome"] == "failed"}
    accuracy = [row["eval_accuracy"] for row in history.rounds(run_id)]
    history.close()

    assert len(accuracy) == ROUNDS
    assert 2 <= held <= ROUNDS - 2
    assert all(answered[number] == set(STUDENTS) for number in range(1, held + 1))
    after = range(held + 1, ROUNDS + 1)  # every round after bob left: he fails at once, the others answer
    assert all(answered[number] == {"alice", "carol"} for number in after)
    assert {("bob", number) for number in after} <= {(provider, number) for number, provider in failed}
    assert accuracy[-1] > accuracy[0], accuracy
    assert examples["carol"] == {60} and len(examples["alice"]) == 1 and examples["alice"] != {60}
    print("accuracy per round", accuracy)
    roster = json.loads(teacher.run("import json; print(json.dumps(classroom.roster.rows()))"))
    assert {row["name"]: row["status"] for row in roster} == {"alice": "joined", "bob": "left", "carol": "joined"}
    assert {row["name"]: row["data"] for row in roster}["carol"] == "own examples"
    assert {row["name"]: row["answered"] for row in roster}["alice"] == ROUNDS
    # one machine here: every name joined from 127.0.0.1, which holds all three (bob left, and may come back)
    assert {(row["address"], row["names from it"]) for row in roster} == {("127.0.0.1", len(STUDENTS))}
    calls = json.loads(room["alice"].run("import json; print(json.dumps(student.rows()))"))
    assert [call["round"] for call in calls] == list(range(1, ROUNDS + 1))
    assert all(call["outcome"] == "succeeded" and call["examples"] > 0 for call in calls)
    assert calls[0]["your last update"] == "" and all("with the class average" in c["your last update"] for c in calls[1:])
