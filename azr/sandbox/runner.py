"""The sandbox runner: a stdlib-only fork server that runs untrusted Python programs.

Both sandbox backends run this one file, inside a container (docker) or as a local worker
process (process). It must import nothing outside the standard library.

Protocol, JSON lines on stdin/stdout:
  host -> runner, first line   {"config": {...}}               limits, see DEFAULT_CONFIG
  runner -> host               {"hello": {...}}                python version, network isolation
  host -> runner, then         {"id": 7, "kind": "validate", ...}   one job per line, see JOB_FIELDS
  runner -> host               {"id": 7, "status": "ok", ...}       one line per job, in completion order
A line the runner cannot use gets {"id": <id or null>, "status": "malformed", "error": "..."} and the
runner goes on serving. Every job runs in a fresh forked child with CPU-time, address-space,
file-size, open-file and process limits and a wall-clock kill; at most `slots` children run at once.
"""

import ast
import builtins
import collections
import json
import os
import resource
import selectors
import signal
import sys
import time

DEFAULT_CONFIG = {
    "timeout_seconds": 5.0,  # wall clock per job (all calls of the job together)
    "cpu_seconds": 5,
    "memory_mb": 256,  # address space of one child
    "file_size_mb": 8,
    "open_files": 64,
    "processes": 64,  # RLIMIT_NPROC of a child (counts every process of its user)
    "max_output_chars": 10_000,
    "slots": 4,  # children running at once
    "unshare_net": False,  # enter a private network namespace at start (process backend)
    "child_uid": None,  # run children as this uid/gid (process backend started as root)
    "workdir": None,  # children's working directory
    "parent_death_signal": True,  # children get SIGKILL when the runner dies (process backend)
}
JOB_FIELDS = {
    "validate": {"program": str, "inputs": list, "runs": int, "banned": list},
    "deduction": {"gold": str, "answer": str, "banned": list},
    "abduction": {"program": str, "answer": str, "gold": str, "banned": list},
    "induction": {"program": str, "inputs": list, "golds": list, "banned": list},
}
MAX_LINE = 16 * 1024 * 1024
ORPHAN_SCAN_SECONDS = 1.0

# Bound at import, before any program runs: a program that patches builtins cannot change them.
_repr, _eval, _compile, _exec, _type, _len, _dict, _id, _set = repr, eval, compile, exec, type, len, dict, id, set
_BaseException, _MemoryError, _SyntaxError = BaseException, MemoryError, SyntaxError
_dumps, _write, _exit = json.JSONEncoder(ensure_ascii=False).encode, os.write, os._exit
_BUILTINS = _dict(builtins.__dict__)
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset})
_CONTAINERS = frozenset({list, tuple, set, frozenset})
_RESTORE_NAMES = {"set": set, "frozenset": frozenset}
try:
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)
except (ImportError, OSError):  # a Python built without ctypes still runs, minus the parent-death signal
    _libc = None


class Failure(Exception):
    """A job outcome other than ok: carries the status and a message."""

    def __init__(self, status, error, error_type=None):
        super().__init__(error)
        self.status, self.error, self.error_type = status, error, error_type


class BannedImport(ImportError):
    pass


# ---------------------------------------------------------------- inside the child


def program_globals(banned, hits):
    """Fresh globals with a private copy of builtins whose __import__ refuses banned modules."""
    real_import = _BUILTINS["__import__"]
    banned = frozenset(banned)

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.partition(".")[0] in banned:
            hits.append(name)
            raise BannedImport(f"import of banned module {name!r}")
        return real_import(name, globals, locals, fromlist, level)

    scope = _dict(_BUILTINS)
    scope["__import__"] = guarded_import
    return {"__builtins__": scope, "__name__": "__main__"}


def load_program(source, scope):
    try:
        code = _compile(source, "<program>", "exec")
    except (_SyntaxError, ValueError) as exc:
        raise Failure("syntax", f"program does not parse: {exc}", _type(exc).__name__) from None
    _exec(code, scope)
    f = scope.get("f")
    if not callable(f):
        raise Failure("syntax", "program defines no function f")


def compile_expression(text, what):
    try:
        return _compile("(\n" + text + "\n)", f"<{what}>", "eval")
    except (_SyntaxError, ValueError) as exc:
        raise Failure("syntax", f"{what} does not parse: {exc}", _type(exc).__name__) from None


def is_plain(value):
    """True when value is built only from builtin data types (so == and repr cannot be faked)."""
    stack, seen = [value], _set()
    while stack:
        item = stack.pop()
        kind = _type(item)
        if kind not in _PLAIN:
            return False
        if kind is dict or kind in _CONTAINERS:
            if _id(item) in seen:
                continue
            seen.add(_id(item))
            stack.extend(dict.keys(item) if kind is dict else item)
            if kind is dict:
                stack.extend(dict.values(item))
    return True


def output_repr(value, limit):
    """repr of a returned value, or Failure('bad_output') when it cannot be a gold output."""
    if not is_plain(value):
        raise Failure("bad_output", f"returns a {_type(value).__name__} value, not built from builtin data types")
    try:
        text = _repr(value)
    except _MemoryError:
        raise
    except _BaseException as exc:
        raise Failure("bad_output", f"repr of the output failed: {_type(exc).__name__}: {exc}") from None
    if _len(text) > limit:
        raise Failure("bad_output", f"output repr has {_len(text)} characters, more than {limit}")
    return text


def check_round_trip(text, value):
    try:
        restored = _eval(text, {"__builtins__": _RESTORE_NAMES})
    except _BaseException as exc:
        raise Failure("bad_output", f"output repr does not evaluate back: {_type(exc).__name__}: {exc}") from None
    if not (is_plain(restored) and restored == value):
        raise Failure("bad_output", "output repr evaluates to a different value")


_keep_alive = []


def perturb_allocator():
    """Hold one new object in each small size class so id()-derived values differ between calls."""
    _keep_alive.append([object(), 0.5, *(bytes(n) for n in range(1, 136, 16))])


def run_validate(job, scope, limit):
    load_program(job["program"], scope)
    outputs = []
    for number, text in enumerate(job["inputs"]):
        call = compile_expression("f(" + text + "\n)", f"input {number}")
        first = None
        for run in range(job["runs"]):
            if run:
                perturb_allocator()
            value = _eval(call, scope)  # the call text is evaluated again: fresh copies of the input
            out = output_repr(value, limit)
            if run and out != first:
                raise Failure("nondeterministic", f"input {number}: call {run + 1} returned {out[:200]}, call 1 returned {first[:200]}")
            first = out
        check_round_trip(first, value)
        outputs.append(first)
    return {"outputs": outputs}


def equal_plain(gold, value):
    return is_plain(value) and gold == value


def run_deduction(job, scope, limit):
    gold = _eval(compile_expression(job["gold"], "gold output"), {"__builtins__": _RESTORE_NAMES})
    answer = _eval(compile_expression(job["answer"], "answer"), scope)
    return {"correct": equal_plain(gold, answer)}


def abduction_call(answer):
    """`f(...)` call text is used as is; anything else is argument text for f."""
    try:
        body = ast.parse(answer.strip(), mode="eval").body
    except (_SyntaxError, ValueError):
        body = None
    is_call = _type(body) is ast.Call and _type(body.func) is ast.Name and body.func.id == "f"
    return answer if is_call else "f(" + answer + "\n)"


def run_abduction(job, scope, limit):
    gold = _eval(compile_expression(job["gold"], "gold output"), {"__builtins__": _RESTORE_NAMES})
    load_program(job["program"], scope)
    call = compile_expression(abduction_call(job["answer"]), "answer")
    return {"correct": equal_plain(gold, _eval(call, scope))}


def run_induction(job, scope, limit):
    if _len(job["inputs"]) != _len(job["golds"]):
        raise Failure("malformed", "induction job needs as many gold outputs as inputs")
    load_program(job["program"], scope)
    for number, (text, gold_text) in enumerate(zip(job["inputs"], job["golds"])):
        gold = _eval(compile_expression(gold_text, f"gold output {number}"), {"__builtins__": _RESTORE_NAMES})
        if not equal_plain(gold, _eval(compile_expression("f(" + text + "\n)", f"input {number}"), scope)):
            return {"correct": False}
    return {"correct": True}


RUNNERS = {"validate": run_validate, "deduction": run_deduction, "abduction": run_abduction, "induction": run_induction}


def limit_child(config):
    mb = 1024 * 1024
    cpu = int(config["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (config["memory_mb"] * mb, config["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_size_mb"] * mb, config["file_size_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (config["open_files"], config["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config["child_uid"] is not None:
        os.setgroups([])
        os.setgid(config["child_uid"])
        os.setuid(config["child_uid"])
    resource.setrlimit(resource.RLIMIT_NPROC, (config["processes"], config["processes"]))
    if config["parent_death_signal"] and _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (after setuid, which clears it)
    try:  # the kernel's OOM killer takes children before the runner
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        os.write(fd, b"1000")
        os.close(fd)
    except OSError:
        pass


FIELD_SEPARATOR = "\0"


def encode_result(status, error_type="", error="", correct="", outputs=()):
    """Child -> runner result: NUL-separated text (a repr never holds a raw NUL); cheap to write after fork."""
    error = error.replace(FIELD_SEPARATOR, "\\0")
    return FIELD_SEPARATOR.join((status, error_type or "", error, correct, *outputs)).encode("utf-8", "surrogatepass")


def decode_result(data):
    """The job answer from a child's bytes, or None when they are not a result."""
    try:
        status, error_type, error, correct, *outputs = data.decode("utf-8", "surrogatepass").split(FIELD_SEPARATOR)
    except (UnicodeDecodeError, ValueError):
        return None
    if status not in STATUSES:
        return None
    result = {"status": status, "error": error or None, "error_type": error_type or None}
    if correct:
        result["correct"] = correct == "1"
    if status == "ok" and not correct:
        result["outputs"] = outputs
    return result


STATUSES = {"ok", "error", "timeout", "memory", "killed", "banned", "syntax", "nondeterministic", "bad_output", "malformed"}


def child_main(job, scope, hits, config):
    """Runs in the forked child, writes the result on fd 3; the caller must _exit whatever happens."""
    try:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(4, 1 << 20)
        limit_child(config)
        if config["workdir"]:
            os.chdir(config["workdir"])
    except BaseException as exc:  # cannot set up the limits: refuse to run the program
        _write(3, encode_result("killed", "", f"sandbox setup failed: {exc!r}"))
        return
    try:
        answer = RUNNERS[job["kind"]](job, scope, config["max_output_chars"])
        if "correct" in answer:
            data = encode_result("ok", correct="1" if answer["correct"] else "0")
        else:
            data = encode_result("ok", outputs=answer["outputs"])
    except Failure as exc:
        data = encode_result(exc.status, exc.error_type, exc.error)
    except _MemoryError:
        data = encode_result("memory", "MemoryError", "MemoryError: memory limit reached")
    except _BaseException as exc:
        try:
            message = f"{_type(exc).__name__}: {str(exc)[:500]}"
        except _BaseException:
            message = _type(exc).__name__
        data = encode_result("error", _type(exc).__name__, message)
    if hits:  # even when the program caught the ImportError
        data = encode_result("banned", "ImportError", f"imports banned module {hits[0]!r}")
    view = memoryview(data)
    while view:
        view = view[_write(3, view) :]


# ---------------------------------------------------------------- the fork server


class Child:
    def __init__(self, job, pid, fd, pidfd, deadline):
        self.job, self.pid, self.fd, self.pidfd, self.deadline = job, pid, fd, pidfd, deadline
        self.data = bytearray()
        self.started = time.monotonic()
        self.timed_out = False


def child_verdict(child, status_code, usage, config):
    """The job's answer from what the child wrote and how it ended."""
    if child.timed_out:
        return {"status": "timeout", "error": f"wall-clock limit of {config['timeout_seconds']} s reached"}
    if os.WIFSIGNALED(status_code):
        sig = os.WTERMSIG(status_code)
        cpu = usage.ru_utime + usage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= config["cpu_seconds"]):
            return {"status": "timeout", "error": f"CPU-time limit of {config['cpu_seconds']} s reached"}
        if sig == signal.SIGXFSZ:
            return {"status": "error", "error": f"file-size limit of {config['file_size_mb']} MiB reached", "error_type": "SIGXFSZ"}
        if sig == signal.SIGKILL and usage.ru_maxrss * 1024 >= 0.9 * config["memory_mb"] * 1024 * 1024:
            return {"status": "memory", "error": "killed near the memory limit"}
        return {"status": "killed", "error": f"killed by signal {signal.Signals(sig).name}"}
    result = decode_result(bytes(child.data)) if child.data else None
    if result is None:
        code = os.WEXITSTATUS(status_code)
        return {"status": "error", "error": f"program ended the process (exit code {code}) without a result", "error_type": "SystemExit"}
    return result


def job_error(line):
    """None when the job line is usable, else the reason."""
    kind = line.get("kind")
    if kind not in JOB_FIELDS:
        return f"unknown job kind {kind!r}; expected one of {sorted(JOB_FIELDS)}"
    for field, kind_type in JOB_FIELDS[kind].items():
        if not isinstance(line.get(field), kind_type):
            return f"{kind} job field {field!r} must be a {kind_type.__name__}"
    for field in ("inputs", "golds", "banned"):
        if field in line and not all(isinstance(item, str) for item in line[field]):
            return f"{kind} job field {field!r} must be a list of strings"
    if kind == "validate" and line["runs"] < 1:
        return "validate job field 'runs' must be >= 1"
    return None


class Server:
    """Reads jobs from stdin, runs each in a forked child, writes answers to stdout."""

    def __init__(self, config):
        self.config = config
        self.selector = selectors.DefaultSelector()
        self.queue = collections.deque()
        self.children = {}
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.stdin_open = True
        self.last_scan = time.monotonic()
        self.forked_since_scan = False
        os.set_blocking(0, False)
        os.set_blocking(1, False)
        self.selector.register(0, selectors.EVENT_READ, "stdin")

    def send(self, message):
        self.outbuf += _dumps(message).encode("utf-8", "surrogatepass") + b"\n"

    def flush(self):
        while self.outbuf:
            try:
                written = os.write(1, self.outbuf)
            except BlockingIOError:
                break
            except BrokenPipeError:
                _exit(0)  # the host is gone; the children die with us (or with the container)
            del self.outbuf[:written]
        want = selectors.EVENT_WRITE if self.outbuf else 0
        registered = 1 in self.selector.get_map()
        if want and not registered:
            self.selector.register(1, want, "stdout")
        elif not want and registered:
            self.selector.unregister(1)

    def read_stdin(self):
        try:
            data = os.read(0, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.stdin_open = False
            self.selector.unregister(0)
            data = b"\n"
        self.inbuf += data
        self.accept_lines()

    def accept_lines(self):
        start = 0
        while (end := self.inbuf.find(b"\n", start)) >= 0:
            if end > start:
                self.accept(bytes(self.inbuf[start:end]))
            start = end + 1
        del self.inbuf[:start]
        if len(self.inbuf) > MAX_LINE:
            self.inbuf.clear()
            self.send({"id": None, "status": "malformed", "error": f"request line longer than {MAX_LINE} bytes"})

    def accept(self, line):
        try:
            job = json.loads(line)
        except ValueError as exc:
            self.send({"id": None, "status": "malformed", "error": f"request is not JSON: {exc}"})
            return
        if not isinstance(job, dict):
            self.send({"id": None, "status": "malformed", "error": "request must be a JSON object"})
            return
        problem = job_error(job)
        if problem:
            self.send({"id": job.get("id"), "status": "malformed", "error": problem})
            return
        self.queue.append(job)

    def start_children(self):
        while self.queue and len(self.children) < self.config["slots"]:
            job = self.queue.popleft()
            hits = []
            scope = program_globals(job["banned"], hits)  # built before fork: the child copies fewer pages
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            try:
                pid = os.fork()
            except OSError as exc:
                os.close(read_fd), os.close(write_fd)
                self.send({"id": job.get("id"), "status": "killed", "error": f"cannot fork: {exc}"})
                continue
            if pid == 0:
                try:
                    os.dup2(write_fd, 3)
                    child_main(job, scope, hits, self.config)
                finally:
                    _exit(0)  # never fall back into the server loop
            os.close(write_fd)
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass
            os.set_blocking(read_fd, False)
            child = Child(job, pid, read_fd, os.pidfd_open(pid), time.monotonic() + self.config["timeout_seconds"])
            self.children[pid] = child
            self.selector.register(read_fd, selectors.EVENT_READ, child)
            self.selector.register(child.pidfd, selectors.EVENT_READ, "exit")
            self.forked_since_scan = True

    def drain(self, child):
        while child.fd is not None:
            try:
                data = os.read(child.fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                self.selector.unregister(child.fd)
                os.close(child.fd)
                child.fd = None
                return
            child.data += data
            if len(child.data) > 4 * self.config["max_output_chars"] + 65536:
                child.data.clear()  # more than any result can be: the program is writing junk
                kill_group(child.pid)

    def reap(self):
        while True:
            try:
                pid, status_code, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue  # an orphaned grandchild we adopted
            kill_group(pid)
            self.drain(child)
            if child.fd is not None:
                self.selector.unregister(child.fd)
                os.close(child.fd)
            self.selector.unregister(child.pidfd)
            os.close(child.pidfd)
            verdict = child_verdict(child, status_code, usage, self.config)
            verdict["seconds"] = round(time.monotonic() - child.started, 6)
            self.send({"id": child.job.get("id"), **verdict})

    def enforce_deadlines(self):
        now = time.monotonic()
        for child in self.children.values():
            if not child.timed_out and now >= child.deadline:
                child.timed_out = True
                kill_group(child.pid)

    def kill_orphans(self):
        """Kill processes that escaped a child's process group and were re-parented to us."""
        self.last_scan = time.monotonic()
        self.forked_since_scan = False
        me = os.getpid()
        try:
            pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
        except OSError:
            return
        for pid in pids:
            if pid == me or pid in self.children:
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    ppid = int(fh.read().rpartition(b")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                self.forked_since_scan = True  # scan (and reap) again until it is gone

    def timeout(self):
        """Seconds until the next deadline or orphan scan; None to wait for input."""
        waits = [c.deadline - time.monotonic() for c in self.children.values() if not c.timed_out]
        if self.children and not waits:
            waits.append(0.05)  # killed children not reaped yet
        if self.forked_since_scan:
            waits.append(self.last_scan + ORPHAN_SCAN_SECONDS - time.monotonic())
        return max(0.0, min(waits)) if waits else None

    def serve(self):
        while self.stdin_open or self.queue or self.children:
            self.start_children()
            self.flush()
            for key, _ in self.selector.select(self.timeout()):
                if key.data == "stdin":
                    self.read_stdin()
                elif key.data == "stdout":
                    self.flush()
                elif key.data != "exit":
                    self.drain(key.data)
            self.reap()
            self.enforce_deadlines()
            if self.forked_since_scan and time.monotonic() - self.last_scan > ORPHAN_SCAN_SECONDS:
                self.kill_orphans()
                self.reap()
        os.set_blocking(1, True)
        self.flush()


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def unshare_network():
    """Enter a private network namespace; returns how, or None when the kernel refuses."""
    clone_newnet, clone_newuser = 0x40000000, 0x10000000
    if _libc is None:
        return None
    if _libc.unshare(clone_newnet) == 0:
        return "netns"
    if _libc.unshare(clone_newuser | clone_newnet) == 0:
        return "userns+netns"
    return None


def read_config():
    """The first line, read straight from fd 0 (a buffered reader would swallow the jobs after it)."""
    data = bytearray()
    while b"\n" not in data:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        data += chunk
    line, _, rest = bytes(data).partition(b"\n")
    try:
        given = json.loads(line)["config"]
        unknown = set(given) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
    except (ValueError, KeyError, TypeError) as exc:
        sys.stdout.write(json.dumps({"id": None, "status": "malformed", "error": f"first line must be {{\"config\": {{...}}}}: {exc}"}) + "\n")
        sys.exit(2)
    return {**DEFAULT_CONFIG, **given}, rest


def ensure_fixed_hash_seed():
    """Set ordering must be reproducible: re-execute with PYTHONHASHSEED=0 when it is not fixed."""
    if os.environ.get("PYTHONHASHSEED") == "0" and not sys.flags.hash_randomization:
        return
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    os.execve(sys.executable, [sys.executable, "-S", os.path.abspath(__file__)], env)


def main():
    ensure_fixed_hash_seed()
    config, rest = read_config()
    network = unshare_network() if config["unshare_net"] else None
    if _libc is not None:
        _libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: escaped grandchildren become ours to kill
    import gc

    gc.collect()
    gc.freeze()  # children then do not copy-on-write every page when they collect
    server = Server(config)
    server.inbuf += rest
    server.send({"hello": {"python": sys.version.split()[0], "pid": os.getpid(), "uid": os.getuid(), "network": network}})
    server.accept_lines()
    server.serve()


if __name__ == "__main__":
    main()
