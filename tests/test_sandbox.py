"""Sandbox conformance: the same tests against both backends (docker runs for real where a daemon answers).

Hostile programs run twice where it makes sense: with the default banned list (the AST check stops
them) and with an empty one, so that the runtime limits themselves are what is tested.
Set AZR_REQUIRE_DOCKER=1 (CI does) to fail instead of skip when the docker backend cannot start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from azr.config import DEFAULT_BANNED_MODULES, ExecutorConfig
from azr.sandbox import SandboxError, open_sandbox
from azr.sandbox import client as client_module

SECRET = "azr-test-secret-7f3a"
LIMITS = dict(timeout_seconds=2.0, cpu_seconds=2, memory_mb=256, max_output_chars=1000, pool_size=2, worker_slots=4)


def docker_problem(config: ExecutorConfig) -> str | None:
    from azr.sandbox.docker_backend import docker_client, image_problem

    try:
        return image_problem(docker_client(timeout=3.0), config.image)
    except SandboxError as exc:
        return str(exc)


def open_backend(backend: str, **overrides) -> object:
    if backend == "docker-attach":  # the docker backend over the daemon's attach stream instead of a socket
        backend, overrides = "docker", {**overrides, "docker_transport": "attach"}
    config = ExecutorConfig(backend=backend, **{**LIMITS, **overrides})
    if backend == "docker":
        problem = docker_problem(config)
        if problem:
            if os.environ.get("AZR_REQUIRE_DOCKER"):
                pytest.fail(f"docker backend required but unavailable: {problem}")
            pytest.skip(f"docker backend unavailable: {problem} (containers/setup-docker.sh sets it up)")
    return open_sandbox(config)


BACKENDS = ["process", pytest.param("docker", marks=pytest.mark.docker)]
# Conformance also runs over docker's second transport; the CRUXEval tests use BACKENDS only.
CONFORMANCE_BACKENDS = [*BACKENDS, pytest.param("docker-attach", marks=pytest.mark.docker)]


@pytest.fixture(scope="module", params=CONFORMANCE_BACKENDS)
def sandbox(request):
    os.environ["AZR_TEST_SECRET"] = SECRET  # must not reach any program
    try:
        with open_backend(request.param) as box:
            yield box
    finally:
        os.environ.pop("AZR_TEST_SECRET", None)


def validate_one(sandbox, program: str, inputs: list[str], banned=None):
    return sandbox.validate([(program, inputs)], banned_modules=banned)[0]


def assert_serving(sandbox) -> None:
    """The pool still answers correctly after whatever came before."""
    result = validate_one(sandbox, "def f(x):\n    return sorted(x)", ["[3, 1, 2]"])
    assert (result.status, result.outputs) == ("ok", ["[1, 2, 3]"])


# ------------------------------------------------------------------ normal programs


def test_validate_returns_gold_reprs_and_renames_first_function(sandbox):
    result = validate_one(sandbox, "def double(xs, k):\n    return [x * k for x in xs]\n", ["[1, 2], 3", "['a'], 2"])
    assert result.status == "ok", result.error
    assert result.outputs == ["[3, 6]", "['aa']"]
    assert result.program.startswith("def f(xs, k)")
    assert result.error is None and result.seconds > 0


def test_recursive_function_keeps_working_after_rename(sandbox):
    result = validate_one(sandbox, "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)", ["5"])
    assert (result.status, result.outputs) == ("ok", ["120"])


def test_set_order_is_the_fixed_hash_seed_order(sandbox):
    program = "def f(words):\n    return set(words)"
    words = "['pear', 'apple', 'fig', 'kiwi', 'plum', 'date']"
    expected = subprocess.run(
        [sys.executable, "-c", f"print(repr(set({words})))"], env={"PYTHONHASHSEED": "0"}, capture_output=True, text=True
    ).stdout.strip()
    results = sandbox.validate([(program, [words])] * 6)  # spread over workers and children
    assert {r.outputs[0] for r in results} == {expected}


def test_programs_may_import_allowed_modules(sandbox):
    result = validate_one(sandbox, "import math\nfrom collections import Counter\ndef f(x):\n    return math.isqrt(x), Counter('aab')['a']", ["17"])
    assert (result.status, result.outputs) == ("ok", ["(4, 2)"])


def test_many_inputs_many_programs_keep_their_order(sandbox):
    items = [(f"def f(x):\n    return x + {i}", [str(j) for j in range(3)]) for i in range(40)]
    results = sandbox.validate(items)
    assert [r.outputs for r in results] == [[str(i + j) for j in range(3)] for i in range(40)]


def nested(levels: int, wrap) -> object:
    value = 0
    for _ in range(levels):
        value = wrap(value)
    return value


def test_shared_and_special_values_evaluate_back(sandbox):
    expected = [[1], [1], {"k": ([1], -0.0, 2j, 1e300)}, set(), frozenset()]
    result = validate_one(sandbox, "def f(x):\n    a = [1]\n    return [a, a, {'k': (a, -0.0, 2j, 1e300)}, set(), frozenset()]", ["1"])
    assert (result.status, result.outputs) == ("ok", [repr(expected)]), result.error


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_nesting_limit_is_the_parsers(backend):
    """A repr that nests more brackets than Python's parser accepts (200) does not evaluate back."""
    program = "def f(n):\n    v = 0\n    for _ in range(n):\n        v = {}\n    return v"
    cases = {("[v]", 200): "ok", ("[v]", 201): "bad_output", ("frozenset({v})", 100): "ok", ("frozenset({v})", 101): "bad_output"}
    with open_backend(backend, max_output_chars=10_000) as box:
        results = box.validate([(program.format(wrap), [str(n)]) for wrap, n in cases])
    assert [r.status for r in results] == list(cases.values()), [r.error for r in results]
    assert all("nested" in r.error for r in results if r.status == "bad_output")
    assert results[0].outputs == [repr(nested(200, lambda v: [v]))]


# ------------------------------------------------------------------ ground-truth failures


@pytest.mark.parametrize(
    "program, status",
    [
        ("def f(x)\n    return x", "syntax"),
        ("x = 1", "syntax"),
        ("def f(x):\n    return undefined_name", "error"),
        ("def f(x):\n    raise ValueError('no')", "error"),
        ("import os\ndef f(x):\n    return 1", "banned"),
        ("def f(x):\n    return __import__('os').getpid()", "banned"),
        ("def f(x):\n    exec('import os')\n    return 1", "banned"),
        ("def f(x):\n    import importlib\n    return importlib.import_module('os').sep", "banned"),
        ("def f(x, seen=[]):\n    seen.append(x)\n    return len(seen)", "nondeterministic"),
        ("def f(x):\n    return id(object())", "nondeterministic"),
        ("def f(x):\n    return hash(object())", "nondeterministic"),
        ("def f(x):\n    return lambda: x", "bad_output"),
        ("def f(x):\n    return object()", "bad_output"),
        ("def f(x):\n    return float('nan')", "bad_output"),
        ("def f(x):\n    return [1.5, {'a': (2, float('-inf'))}]", "bad_output"),
        ("def f(x):\n    return complex(1, float('inf'))", "bad_output"),
        ("def f(x):\n    a = []\n    a.append(a)\n    return a", "bad_output"),
        ("def f(x):\n    return 'x' * 5000", "bad_output"),  # repr longer than max_output_chars
    ],
)
def test_ground_truth_statuses(sandbox, program, status):
    result = validate_one(sandbox, program, ["1"])
    assert result.status == status, (result.status, result.error)
    assert result.outputs == []
    assert result.error


def test_input_that_does_not_parse_is_syntax(sandbox):
    assert validate_one(sandbox, "def f(x):\n    return x", ["[1, 2"]).status == "syntax"


def test_runtime_guard_refuses_banned_import_the_ast_cannot_see(sandbox):
    """A job that skipped the host check (as a hand-written runner job does) is still refused at run time."""
    answers = sandbox.run(
        [{"kind": "validate", "program": "def f(x):\n    exec('imp' + 'ort os')\n    return 1", "inputs": ["1"], "runs": 2, "banned": ["os"]}]
    )
    assert answers[0]["status"] == "banned"


@pytest.mark.parametrize("program", [
    "def f(p):\n    return open(p).read()[:50]",  # the host's AST check
    "import codecs\ndef f(p):\n    return codecs.open(p).read()[:50]",  # the runner's audit hook
    "import linecache\ndef f(p):\n    return linecache.getline(p, 1)",
    "import getpass\ndef f(p):\n    return getpass.getuser()",  # the runner's guarded os.environ
])
def test_a_program_whose_output_depends_on_files_or_the_environment_is_impure(sandbox, program):
    result = validate_one(sandbox, program, ["'/etc/passwd'"])
    assert result.status == "impure", (result.status, result.error)
    assert result.error.endswith("a task must be a pure function of its input")


@pytest.mark.parametrize("module", ["po' + 'six", "_ran' + 'dom", "_thr' + 'ead"])
def test_runtime_guard_knows_a_module_under_its_other_name(sandbox, module):
    """`posix` is `os`, `_random` is `random`, `_thread` is `threading`, also when the name is built at run time."""
    program = f"def f(x):\n    exec('import ' + '{module}')\n    return 1"
    answers = sandbox.run([{"kind": "validate", "program": program, "inputs": ["1"], "runs": 2, "banned": ["os", "random", "threading"]}])
    assert answers[0]["status"] == "banned"


def test_caught_banned_import_is_still_banned(sandbox):
    program = "def f(x):\n    try:\n        exec('import socket')\n    except ImportError:\n        pass\n    return 1"
    answers = sandbox.run([{"kind": "validate", "program": program, "inputs": ["1"], "runs": 2, "banned": ["socket"]}])
    assert answers[0]["status"] == "banned"


# ------------------------------------------------------------------ hostile programs: every one gets a status


HOSTILE = {
    "infinite loop": ("def f(x):\n    while True:\n        pass", {"timeout"}),
    "cpu spin in a C call": ("def f(x):\n    return sum(range(10 ** 13))", {"timeout"}),
    "memory bomb": ("def f(x):\n    return [0] * (10 ** 10)", {"memory"}),
    "growing memory bomb": ("def f(x):\n    a = []\n    while True:\n        a.append(bytearray(10 ** 7))", {"memory"}),
    "deep recursion": ("def f(x):\n    return f(x + 1)", {"error"}),
    "huge printed output": ("def f(x):\n    for _ in range(200):\n        print('y' * 100000)\n    return 7", {"ok"}),
    "huge return value": ("def f(x):\n    return 'z' * (10 ** 7)", {"bad_output"}),
    "unrepr-able return": ("class A:\n    def __repr__(self):\n        raise RuntimeError('no')\ndef f(x):\n    return A()", {"bad_output"}),
    "fake equality": (
        "class A:\n    def __eq__(self, other):\n        return True\n    def __repr__(self):\n        return '1'\ndef f(x):\n    return A()",
        {"bad_output"},
    ),
    "SystemExit raised": ("def f(x):\n    raise SystemExit(3)", {"error"}),
    "KeyboardInterrupt raised": ("def f(x):\n    raise KeyboardInterrupt", {"error"}),
    "exit() called": ("def f(x):\n    exit(0)", {"error"}),
}

HOSTILE_UNBANNED = {
    "fork bomb": ("import os\ndef f(x):\n    while True:\n        os.fork()", {"timeout", "error", "killed", "memory"}),
    "deep recursion past the limit": (
        "import sys\ndef f(x):\n    sys.setrecursionlimit(10 ** 7)\n    return g(0)\ndef g(n):\n    return g(n + 1) + 1",
        {"killed", "memory", "error", "timeout"},
    ),
    "os._exit": ("import os\ndef f(x):\n    os._exit(0)", {"error"}),
    "sys.exit": ("import sys\ndef f(x):\n    sys.exit(2)", {"error"}),
    "SIGTERM ignored": (
        "import signal\ndef f(x):\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n    while True:\n        pass",
        {"timeout"},
    ),
    "closing stdout": ("import os, sys\ndef f(x):\n    sys.stdout.close()\n    os.closerange(0, 3)\n    return 5", {"ok"}),
    "closing the result pipe": ("import os\ndef f(x):\n    os.close(3)\n    return 5", {"error"}),
    "threads left running": (
        "import threading\ndef f(x):\n    threading.Thread(target=spin, daemon=False).start()\n    return 9\ndef spin():\n    while True:\n        pass",
        {"ok"},
    ),
    "ctypes segfault": ("import ctypes\ndef f(x):\n    return ctypes.string_at(0)", {"killed"}),
    "writing a big file": ("def f(x):\n    with open('big.bin', 'wb') as fh:\n        fh.write(b'0' * (64 * 1024 * 1024))\n    return 1", {"error", "memory"}),
    "random with patched repr": (
        "import builtins, random\ndef f(x):\n    builtins.repr = lambda value: '0'\n    return random.random()",
        {"nondeterministic"},
    ),
    "escaped grandchild": (
        "import os, time\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n        while True:\n            pass\n    return 4",
        {"ok"},
    ),
}


def test_hostile_programs_get_a_status_and_the_pool_keeps_serving(sandbox):
    names = list(HOSTILE)
    results = sandbox.validate([(HOSTILE[n][0], ["1"]) for n in names])
    got = {name: (r.status, r.error) for name, r in zip(names, results)}
    assert {name: got[name][0] for name in names if got[name][0] not in HOSTILE[name][1]} == {}, got
    assert_serving(sandbox)


@pytest.mark.parametrize("banned", [[], DEFAULT_BANNED_MODULES], ids=["runtime-limits", "ast-check"])
def test_hostile_unbanned_programs(sandbox, banned):
    names = list(HOSTILE_UNBANNED)
    results = sandbox.validate([(HOSTILE_UNBANNED[n][0], ["1"]) for n in names], banned_modules=banned)
    got = {name: (r.status, r.error) for name, r in zip(names, results)}
    if banned:  # everything that imports a banned module is stopped before it runs
        assert {name for name in names if got[name][0] != "banned" and "import" in HOSTILE_UNBANNED[name][0]} == set(), got
    else:
        assert {name: got[name][0] for name in names if got[name][0] not in HOSTILE_UNBANNED[name][1]} == {}, got
        assert [r.outputs for n, r in zip(names, results) if n in ("closing stdout", "threads left running")] == [["5"], ["9"]]
    assert_serving(sandbox)


def test_escaped_grandchildren_are_killed():
    with open_backend("process", pool_size=1) as box:
        program = "import os\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n        while True:\n            pass\n    return 4"
        assert validate_one(box, program, ["1"], banned=[]).outputs == ["4"]
        zygotes = adopted(box.hello["pid"])  # the runner's one child forks the programs and adopts escapees
        assert len(zygotes) == 1
        deadline = time.monotonic() + 10
        while adopted(zygotes[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert adopted(zygotes[0]) == []


def adopted(pid: int) -> list[int]:
    """Processes whose parent is pid (escaped grandchildren are re-parented to the runner)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                if int(fh.read().rpartition(b")")[2].split()[1]) == pid:
                    found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


# Forks until the process limit refuses, then holds every process it made for two seconds.
PROCESS_HOG = (
    "import os, time\ndef f(x):\n    try:\n        while True:\n            if os.fork() == 0:\n"
    "                time.sleep(30)\n                os._exit(0)\n    except BlockingIOError:\n        time.sleep(2.0)\n        raise"
)
# Starts a thread half a second into each call: while the hog holds the limit, when beside it.
LATE_THREAD = "import threading, time\ndef f(x):\n    time.sleep(0.5)\n    t = threading.Thread(target=len, args=[x])\n    t.start()\n    t.join()\n    return 7"
HOG_LIMITS = dict(timeout_seconds=6.0, cpu_seconds=6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_process_hog_does_not_fail_the_programs_beside_it(backend):
    """Children of one worker share its uid's process limit: a program that failed to start a thread
    while a neighbour held every process is run again alone, and only that run counts."""
    with open_backend(backend, pool_size=1, **HOG_LIMITS) as box:
        hog, beside = box.validate([(PROCESS_HOG, ["1"]), (LATE_THREAD, ["2"])], banned_modules=[])
    assert (beside.status, beside.outputs) == ("ok", ["7"]), beside.error
    assert hog.status == "error" and hog.error.startswith("BlockingIOError"), (hog.status, hog.error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_process_hog_in_one_worker_does_not_starve_another(backend):
    """Each worker's programs run as a uid of their own, so their process limits are separate."""
    if backend == "process" and os.geteuid() != 0:
        pytest.skip("a non-root process backend runs programs as the host user, one process limit for all")
    with open_backend(backend, pool_size=1, **HOG_LIMITS) as hog_box:  # 4 slots: the container allows more than 64 processes
        with open_backend(backend, pool_size=1, **HOG_LIMITS) as other:
            hogs = []
            hogging = threading.Thread(target=lambda: hogs.append(validate_one(hog_box, PROCESS_HOG, ["1"], banned=[])))
            hogging.start()
            time.sleep(0.2)
            beside = validate_one(other, LATE_THREAD, ["2"], banned=[])
            hogging.join()
    assert (beside.status, beside.outputs) == ("ok", ["7"]), beside.error
    assert hogs[0].status == "error" and hogs[0].error.startswith("BlockingIOError"), (hogs[0].status, hogs[0].error)


def test_killing_the_parent_leaves_a_serving_pool(sandbox):
    """In a container the zygote shares the children's user, so this works; the runner starts another zygote."""
    program = "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 1"
    for _ in range(2):
        result = validate_one(sandbox, program, ["1"], banned=[])
        assert result.status in ("error", "killed"), result
        assert_serving(sandbox)
    assert validate_one(sandbox, program, ["1"]).status == "banned"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_program_that_kills_everything_it_can_does_not_fail_the_one_beside_it(backend):
    """kill(-1) reaches every process of the children's uid: in a container the zygote too (the runner,
    PID 1, is immune). The program beside it is run again alone, and the killer, run alone, gets the blame."""
    if backend == "process" and os.geteuid() != 0:
        pytest.skip("a non-root process backend runs programs as the host user: kill(-1) would reach the tests")
    killer = "import os, signal, time\ndef f(x):\n    time.sleep(0.2)\n    os.kill(-1, signal.SIGKILL)\n    return 1"
    slow = "import time\ndef f(x):\n    time.sleep(0.5)\n    return 7"
    with open_backend(backend, pool_size=1, **HOG_LIMITS) as box:
        killed, beside = box.validate([(killer, ["1"]), (slow, ["2"])], banned_modules=[])
        assert_serving(box)
    assert (beside.status, beside.outputs) == ("ok", ["7"]), beside.error
    if backend == "docker":  # the process backend's zygote is root's, out of the killer's reach
        assert (killed.status, killed.error) == ("killed", "the program killed the sandbox zygote"), killed


def test_timeouts_do_not_time_out_their_neighbours(sandbox):
    loops = [("def f(x):\n    while True:\n        pass", ["1"])] * 6
    quick = [(f"def f(x):\n    return x * {i}", ["2"]) for i in range(30)]
    results = sandbox.validate(loops + quick)
    assert [r.status for r in results[:6]] == ["timeout"] * 6
    assert [(r.status, r.outputs) for r in results[6:]] == [("ok", [str(2 * i)]) for i in range(30)]


def test_environment_and_files_of_the_host_stay_out(sandbox, tmp_path):
    env = validate_one(sandbox, "import os\ndef f(x):\n    return sorted(os.environ.items())", ["1"], banned=[])
    assert env.status == "ok" and SECRET not in env.outputs[0]
    target = tmp_path / "written-by-sandbox.txt"
    write = validate_one(sandbox, f"def f(x):\n    open({str(target)!r}, 'w').write('pwned')\n    return 1", ["1"], banned=[])
    if sandbox.backend == "docker" or sandbox.hello["uid"] == 0:  # root host: children run as an unprivileged uid
        assert write.status == "error" and not target.exists()
    passwd = validate_one(sandbox, "def f(x):\n    return open('/etc/passwd').read()[:500]", ["1"], banned=[])
    assert passwd.status == "ok"
    if sandbox.backend == "docker":  # the container's own /etc/passwd, not the host's
        with open("/etc/passwd") as fh:
            assert passwd.outputs[0] != repr(fh.read()[:500])


@pytest.mark.docker
def test_a_program_cannot_reach_the_hosts_runner_socket():
    """The socket transport's socket is gone once the runner has connected: nothing else can talk to the host."""
    from azr.sandbox.docker_backend import SOCKET_MOUNT

    program = (
        "import os, socket\ndef f(x):\n    s = socket.socket(socket.AF_UNIX)\n    try:\n"
        f"        s.connect({SOCKET_MOUNT + '/runner.sock'!r})\n        return 'connected'\n"
        f"    except OSError as exc:\n        return [type(exc).__name__, os.path.exists({SOCKET_MOUNT!r}) and os.listdir({SOCKET_MOUNT!r})]"
    )
    with open_backend("docker", docker_transport="socket", pool_size=1) as box:
        result = validate_one(box, program, ["1"], banned=[])
    assert result.status == "ok", result.error
    assert "connected" not in result.outputs[0] and "runner.sock" not in result.outputs[0]


def test_no_network(sandbox):
    if sandbox.backend == "process" and not sandbox.hello["network"]:
        pytest.skip("this kernel refuses a private network namespace (the process backend logs a warning)")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    program = f"import socket\ndef f(x):\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n    return 1"
    result = validate_one(sandbox, program, ["1"], banned=[])
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()
    assert result.status == "error", result
    assert validate_one(sandbox, program, ["1"]).status == "banned"


# ------------------------------------------------------------------ answer checks


def test_check_deduction_compares_values_under_cruxevals_rule(sandbox):
    items = [("[1, 2]", "[1,2]"), ("'ab'", '"ab"'), ("(1, 'a')", "(1, 'b')"), ("{1: 2}", "dict([(1, 2)])"), ("3", "1 +"), ("1", "__import__('os')")]
    results = sandbox.check_deduction(items, expressions=True)
    assert [r.correct for r in results] == [True, True, False, True, False, False]
    assert [r.status for r in results] == ["ok", "ok", "ok", "ok", "syntax", "banned"]


def test_check_deduction_takes_literals_only(sandbox):
    items = [("[1, 2]", "[1,2]"), ("'ab'", '"ab"'), ("(1, 'a')", "(1, 'b')"), ("{1: 2}", "dict([(1, 2)])"), ("3", "1 +"),
             ("1", "__import__('os')"), ("[3, 2, 1]", "sorted([1, 2, 3])[::-1]"), ("frozenset({1})", "frozenset([1])"),
             ("{1.5, 2}", "{2, 1.5}"), ("1", "True"), ("set()", "set()")]
    results = sandbox.check_deduction(items)
    assert [r.correct for r in results] == [True, True, False, False, False, False, False, True, True, True, True]
    assert [r.status for r in results] == ["ok"] * 3 + ["not_literal"] * 4 + ["ok"] * 4
    assert "calls 'dict'" in results[3].error


def test_check_deduction_refuses_values_with_a_fake_eq(sandbox):
    answer = "type('A', (), {'__eq__': lambda self, other: True})()"
    assert sandbox.check_deduction([("[1, 2]", answer)], expressions=True)[0].correct is False
    assert sandbox.check_deduction([("[1, 2]", answer)])[0].status == "not_literal"


def test_check_deduction_answer_that_hangs_times_out(sandbox):
    result = sandbox.check_deduction([("1", "sum(1 for _ in iter(int, 1))")], expressions=True)[0]
    assert (result.correct, result.status) == (False, "timeout")


def test_check_abduction_accepts_call_text_or_argument_text_under_cruxevals_rule(sandbox):
    program = "def f(a, b):\n    return a * b"
    items = [(program, "f(2, 3)", "6"), (program, "3, 2", "6"), (program, "1, 1", "6"), (program, "f(1, 6)", "6"), (program, "f(", "6")]
    results = sandbox.check_abduction(items, expressions=True)
    assert [r.correct for r in results] == [True, True, False, True, False]
    assert results[-1].status == "syntax"


def test_check_abduction_takes_one_literal_argument_list(sandbox):
    program = "def f(a, b=1):\n    return a * b"
    answers = ["3, 2", "3, b=2", "6", "1, 1", "f(2, 3)", ") if 0 else (6", "*[2, 3]", "2, (b := 3)", "f("]
    results = sandbox.check_abduction([(program, answer, "6") for answer in answers])
    assert [r.correct for r in results] == [True, True, True, False, False, False, False, False, False]
    assert [r.status for r in results] == ["ok"] * 4 + ["not_literal"] * 5


def test_check_induction_needs_every_hidden_pair(sandbox):
    inputs, golds = ["1", "2", "3"], ["2", "4", "6"]
    items = [
        ("def g(x):\n    return x * 2", inputs, golds),
        ("def f(x):\n    return x + 1", inputs, golds),
        ("def f(x):\n    return x + x if x < 3 else 0", inputs, golds),
        ("import os\ndef f(x):\n    return 2 * x", inputs, golds),
        ("def f(x):\n    while True:\n        pass", inputs, golds),
    ]
    results = sandbox.check_induction(items)
    assert [r.correct for r in results] == [True, False, False, False, False]
    assert [r.status for r in results] == ["ok", "ok", "ok", "banned", "timeout"]


# ------------------------------------------------------------------ bad requests


def test_bad_items_raise_errors_naming_the_item(sandbox):
    with pytest.raises(ValueError, match="item 1: inputs must be a list of strings"):
        sandbox.validate([("def f(x):\n    return x", ["1"]), ("def f(x):\n    return x", "1")])
    with pytest.raises(ValueError, match=r"item 0: expected a tuple \(gold output, answer\)"):
        sandbox.check_deduction([("1",)])
    with pytest.raises(ValueError, match="item 0: 2 inputs but 1 gold outputs"):
        sandbox.check_induction([("def f(x):\n    return x", ["1", "2"], ["1"])])
    assert_serving(sandbox)


def test_malformed_runner_jobs_get_an_error_not_a_hang(sandbox):
    answers = sandbox.run([{"kind": "launch"}, {"kind": "validate", "program": 3}, {"kind": "validate", "program": "", "inputs": [1], "runs": 1, "banned": []}])
    assert [a["status"] for a in answers] == ["malformed"] * 3
    assert "unknown job kind 'launch'" in answers[0]["error"]
    assert "'program' must be a str" in answers[1]["error"]
    assert "'inputs' must be a list of strings" in answers[2]["error"]
    assert_serving(sandbox)


def test_runner_answers_garbage_lines_and_keeps_serving():
    from azr.sandbox.client import RUNNER_PATH

    lines = [b'{"config": {}}', b"not json", b"[1, 2]", b'{"id": 4, "kind": "deduction", "gold": "1", "answer": "1", "banned": []}']
    process = subprocess.run([sys.executable, "-S", str(RUNNER_PATH)], input=b"\n".join(lines) + b"\n", capture_output=True, timeout=30)
    import json

    answers = [json.loads(line) for line in process.stdout.splitlines()]
    assert "hello" in answers[0]
    assert [a.get("status") for a in answers[1:]] == ["malformed", "malformed", "ok"]
    assert "request is not JSON" in answers[1]["error"] and answers[3]["correct"] is True


# ------------------------------------------------------------------ workers that idle (faults: test_faults_sandbox.py)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_idle_worker_is_not_taken_for_a_hung_one(backend, monkeypatch):
    """Silence while the pool had nothing to do (the model generating, say) is not a hang."""
    monkeypatch.setattr(client_module, "HANG_GRACE_SECONDS", 1.0)
    with open_backend(backend, pool_size=2, timeout_seconds=1.0, cpu_seconds=1) as box:
        time.sleep(3.0)  # longer than timeout + grace
        window = box.config.worker_slots * client_module.JOBS_PER_SLOT
        # The first worker gets `window` quick jobs, the second one slow job: the first answers while
        # the second is still silent, and must not be replaced for the silence of its idle time.
        slow = "def f(x):\n    n = 0\n    for i in range(3_000_000):\n        n += i\n    return x"
        items = [("def f(x):\n    return x", ["1"])] * window + [(slow, ["2"])]
        results = box.validate(items)
        assert [(r.status, r.outputs) for r in results] == [("ok", ["1"])] * window + [("ok", ["2"])]
        assert box.replaced == 0


def test_auto_backend_says_which_it_picked(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="azr.sandbox")
    config = ExecutorConfig(backend="auto", pool_size=1, image="azr-no-such-image:never")
    with open_sandbox(config) as box:
        assert box.backend == "process"
    assert any("sandbox backend: process" in r.getMessage() for r in caplog.records)


def test_docker_backend_without_image_is_a_clear_error():
    config = ExecutorConfig(backend="docker", pool_size=1, image="azr-no-such-image:never")
    with pytest.raises(SandboxError, match="azr-no-such-image:never|Docker daemon"):
        open_sandbox(config)
