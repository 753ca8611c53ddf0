"""The sandbox runner: a stdlib-only fork server that runs untrusted Python programs.

Both sandbox backends run this one file, inside a container (docker) or as a local worker
process (process). It must import nothing outside the standard library.

Protocol, JSON lines on stdin/stdout:
  host -> runner, first line   {"config": {...}}               limits, see DEFAULT_CONFIG
  runner -> host               {"hello": {...}}                python version, network isolation
  host -> runner, then         {"id": 7, "kind": "validate", ...}   one job per line, see JOB_FIELDS
  runner -> host               {"id": 7, "status": "ok", ...}       one line per job, in completion order
A line the runner cannot use gets {"id": <id or null>, "status": "malformed", "error": "..."} and the
runner goes on serving. The server compiles each job's code (running none of it: a syntax error is
answered at once); every job then runs in a fresh forked child with CPU-time, address-space,
file-size, open-file and process limits and a wall-clock kill; at most `slots` children run at once.

Processes: the server (this process: protocol, deadlines, answers) forks one zygote at start; the
zygote forks a child per job and touches almost nothing else, so a child costs little more than a
fork. Each child writes its result to its own pipe, read by the server. A zygote killed by a
program is replaced; the programs it was running come back as `killed`.
"""

import ast
import builtins
import collections
import collections.abc
import gc
import json
import marshal
import os
import posixpath
import resource
import select
import signal
import socket
import struct
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
    "banned": [],  # modules a program may not import, for jobs that do not list their own
}
# Required fields. Any job may also carry "banned", a list that replaces the config's, and a check job
# (deduction, abduction, induction) "expressions": true for CRUXEval's rule, under which an answer may be
# any expression. Without it an answer must be a literal (see literal_node) and the gold outputs never
# enter the child: it returns f's output reprs and the server compares their values with the golds.
JOB_FIELDS = {
    "validate": {"program": str, "inputs": list, "runs": int},
    "deduction": {"gold": str, "answer": str},
    "abduction": {"program": str, "answer": str, "gold": str},
    "induction": {"program": str, "inputs": list, "golds": list},
}
MAX_LINE = 16 * 1024 * 1024
ORPHAN_SCAN_SECONDS = 1.0
FORK_RETRY_SECONDS = 0.05  # pause before starting a job again when the zygote found no process to fork

# Bound at import, before any program runs: a program that patches builtins cannot change them.
_repr, _eval, _compile, _exec, _type, _len, _dict, _id, _set = repr, eval, compile, exec, type, len, dict, id, set
_BaseException, _MemoryError, _SyntaxError = BaseException, MemoryError, SyntaxError
_dumps, _write, _exit = json.JSONEncoder(ensure_ascii=False).encode, os.write, os._exit
_loads, _marshal_dumps = marshal.loads, marshal.dumps  # server -> child only: the job is ours, not the program's
_BUILTINS = _dict(builtins.__dict__)
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset})
_CONTAINERS = frozenset({list, tuple, set, frozenset})
_RESTORE_NAMES = {"set": set, "frozenset": frozenset}
_normpath, _realpath, _fsdecode = posixpath.normpath, posixpath.realpath, os.fsdecode
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


_banned = frozenset()  # set in each child, before the program runs (module_key of each name)
_default_banned = frozenset()  # the config's list, set once by the zygote
_hits = []  # banned imports the program attempted, even ones it caught


MODULE_ALIASES = {"posix": "os", "nt": "os", "thread": "threading", "posixsubprocess": "subprocess"}  # as in safety.py


def module_key(name):
    """`_random` is banned as `random`, `posix` as `os` (azr/sandbox/safety.py has the same rule)."""
    top = name.partition(".")[0].lstrip("_")
    return MODULE_ALIASES.get(top, top)


def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and module_key(name) in _banned:
        _hits.append(name)
        raise BannedImport(f"import of banned module {name!r}")
    return _real_import(name, globals, locals, fromlist, level)


_real_import = _BUILTINS["__import__"]


# One builtins dict for programs, made once: each child is a fresh fork, so what a program does to
# it never reaches another program, and no child pays for copying it.
_PROGRAM_BUILTINS = {**_BUILTINS, "__import__": guarded_import}


def program_globals():
    return {"__builtins__": _PROGRAM_BUILTINS, "__name__": "__main__"}


# ---------------------------------------------------------------- purity: what a task's program may not touch
#
# A task must be a pure function of its input (design.md section 5). The host refuses what the AST shows
# (safety.py); here, in the child, while the program runs, two guards catch what reaches the outside
# indirectly (through an allowed module, or names built at run time): an audit hook (files, network,
# processes, interpreter internals) and wrappers around the clock, environment, randomness and
# process-state functions of `os` and `time` (which raise no audit event). Both are installed once in
# the zygote and armed only in a child whose banned list is not empty, so an empty list still lets the
# sandbox's own limits be tested. They are defence in depth, not isolation: the container is that.


class ImpureAction(PermissionError):
    pass


_armed = False  # set in a child just before the program runs; never cleared there (the child exits)
_impure = []  # what the program did that a pure function does not, even when it caught the error
_readable = ()  # directories of the Python installation: the import system reads them, lazily too

AUDIT_EVENTS = {  # audit event, or its prefix before the first dot -> what it touches
    "open": "files", "os": "files", "glob": "files", "shutil": "files", "tempfile": "files", "sqlite3": "files",
    "fcntl": "files", "mmap": "files", "socket": "the network", "urllib": "the network", "http": "the network",
    "ftplib": "the network", "smtplib": "the network", "poplib": "the network", "imaplib": "the network",
    "nntplib": "the network", "telnetlib": "the network", "webbrowser": "the network", "ssl": "the network",
    "subprocess": "process state", "pty": "process state", "signal": "process state", "resource": "process state",
    "ctypes": "process state", "cpython": "process state", "gc": "interpreter internals", "syslog": "process state",
    "time": "the clock", "builtins.input": "the environment", "builtins.breakpoint": "process state",
    "sys.addaudithook": "process state", "sys.setprofile": "process state", "sys.settrace": "process state",
    "sys._current_frames": "interpreter internals", "sys._current_exceptions": "interpreter internals",
    "object.__getattr__": "interpreter internals",
}
PROCESS_OS_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
                     "os.killpg", "os.startfile", "os.putenv", "os.unsetenv", "os.add_dll_directory"}
GUARDED = {  # module -> (what it touches, functions that answer from the machine rather than the input)
    "time": ("the clock", ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "process_time",
                           "process_time_ns", "thread_time", "thread_time_ns", "clock_gettime", "clock_gettime_ns",
                           "localtime", "gmtime", "ctime", "asctime", "strftime", "mktime", "get_clock_info", "sleep")),
    "os": ("the environment, randomness or process state", (
        "getenv", "getenvb", "get_exec_path", "urandom", "getrandom", "getpid", "getppid", "getpgrp", "getpgid", "getsid",
        "getuid", "geteuid", "getgid", "getegid", "getgroups", "getlogin", "getresuid", "getresgid", "getpriority",
        "uname", "times", "getloadavg", "cpu_count", "sched_getaffinity", "getcwd", "getcwdb", "stat", "lstat", "fstat",
        "access", "statvfs", "fstatvfs", "readlink", "pathconf", "fpathconf", "read", "write", "pread", "pwrite", "readv",
        "writev", "close", "closerange", "dup", "dup2", "lseek", "pipe", "pipe2", "sendfile", "isatty", "ttyname",
        "ctermid", "get_terminal_size", "sysconf", "confstr", "get_blocking", "set_blocking")),
}


def impure(what):
    """Record what the program did and stop it: the job's status is `impure` even if it catches this."""
    _impure.append(what)
    raise ImpureAction(f"{what}: a task must be a pure function of its input")


def reads_python_files(event, args):
    """True for a read-only open, or a listing, of the Python installation (what any import does)."""
    if not args or event == "open" and not (isinstance(args[2], int) and args[2] & 3 == os.O_RDONLY):
        return False
    path = _fsdecode(args[0]) if isinstance(args[0], bytes) else args[0]
    return isinstance(path, str) and (_normpath(path) + "/").startswith(_readable)


def audit(event, args):
    if not _armed:
        return
    what = AUDIT_EVENTS.get(event) or AUDIT_EVENTS.get(event.partition(".")[0])
    if what is None or (event == "open" or event == "os.listdir") and reads_python_files(event, args):
        return
    if event in PROCESS_OS_EVENTS:
        what = "process state"
    if event == "object.__getattr__" and len(args) > 1:
        event = f"reads attribute {args[1]!r}"
    elif event in ("open", "os.listdir") and args:
        event = f"{event}({args[0]!r:.80})"
    impure(f"{event} ({what})")


def guard(function, name, what):
    def guarded(*args, **kwargs):
        if _armed:
            impure(f"{name}() ({what})")
        return function(*args, **kwargs)

    return guarded


class GuardedEnviron(collections.abc.Mapping):
    """os.environ inside a child: reading the environment is impure."""

    def __init__(self, name):
        self.name = name

    def __getitem__(self, key):
        if _armed:
            impure(f"{self.name}[{key!r:.40}] (the environment)")
        raise KeyError(key)

    def __iter__(self):
        if _armed:
            impure(f"{self.name} (the environment)")
        return iter(())

    def __len__(self):
        if _armed:
            impure(f"{self.name} (the environment)")
        return 0


def install_purity_guards():
    """In the zygote, once, before any child: the audit hook and the guarded functions of os and time."""
    global _readable
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *(p for p in sys.path if p.startswith("/"))}
    _readable = tuple(_normpath(p) + "/" for p in prefixes) + tuple(_realpath(p) + "/" for p in prefixes)
    for module_name, (what, names) in GUARDED.items():
        module = sys.modules[module_name]
        for name in names:
            if hasattr(module, name):
                setattr(module, name, guard(getattr(module, name), f"{module_name}.{name}", what))
    os.environ, os.environb = GuardedEnviron("os.environ"), GuardedEnviron("os.environb")
    sys.addaudithook(audit)


def compile_program(source):
    try:
        return _compile(source, "<program>", "exec")
    except (_SyntaxError, ValueError) as exc:
        raise Failure("syntax", f"program does not parse: {exc}", _type(exc).__name__) from None


def load_program(code, scope):
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


MAX_NESTING = 200  # open brackets Python's parser accepts at once ("too many nested parentheses" past it)


def round_trip_problem(value):
    """Why the repr of a plain value would not evaluate back to an equal value, else None.

    For builtin data types that happens exactly when a float (or a complex part) is not finite
    (`nan` and `inf` are not literals) or the repr nests brackets deeper than the parser accepts (a
    cycle nests without end). Checking that here, instead of evaluating the repr, spares each child
    the parser's allocations.
    """
    stack, deepest = [(value, 0)], {}
    while stack:
        item, depth = stack.pop()
        kind = _type(item)
        if kind is float or kind is complex:
            if kind is complex and (item.real - item.real != 0.0 or item.imag - item.imag != 0.0) or kind is float and item - item != 0.0:
                return f"{item!r} is not a finite number, so its repr is not a literal"
            continue
        if kind is dict or kind in _CONTAINERS:
            depth += 2 if kind is frozenset and item else 1  # frozenset({...}) opens two brackets
            if depth > MAX_NESTING:
                return f"brackets nested more than {MAX_NESTING} deep (or a container that contains itself)"
            if deepest.get(_id(item), -1) >= depth:
                continue  # already checked at this depth or deeper
            deepest[_id(item)] = depth
            children = [*dict.keys(item), *dict.values(item)] if kind is dict else item
            stack.extend((child, depth) for child in children)
    return None


_keep_alive = []


def perturb_allocator():
    """Hold one new object in each small size class so id()-derived values differ between calls."""
    _keep_alive.append([object(), 0.5, *(bytes(n) for n in range(1, 136, 16))])


def run_validate(job, scope, limit):
    load_program(job["program"], scope)
    outputs = []
    for number, call in enumerate(job["calls"]):
        first = None
        for run in range(job["runs"]):
            if run:
                perturb_allocator()
            value = _eval(call, scope)  # the call is evaluated again: fresh copies of the input
            out = output_repr(value, limit)
            if run and out != first:
                raise Failure("nondeterministic", f"input {number}: call {run + 1} returned {out[:200]}, call 1 returned {first[:200]}")
            first = out
        problem = round_trip_problem(value)
        if problem:
            raise Failure("bad_output", f"output repr does not evaluate back: {problem}")
        outputs.append(first)
    return {"outputs": outputs}


# ---------------------------------------------------------------- answers: literals (the rule) or expressions (CRUXEval's)
#
# The literal rule is azr/literals.py's, restated here because the runner imports nothing of azr:
# `ast.literal_eval`'s syntax plus set(), frozenset(<literal>) and float('nan'/'inf'/'-inf'), at most
# MAX_LITERAL_CHARS long. The server parses literals (it never compiles them into the child): gold outputs
# and deduction answers become values compared here, with no fork; an abduction answer must parse as one
# call f(<literal arguments>), whose compiled argument tuple the child evaluates with no builtins but
# set, frozenset and float.

MAX_LITERAL_CHARS = 100_000
_FLOAT_SPECIALS = frozenset({"nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"})
_LITERAL_BUILTINS = {"set": set, "frozenset": frozenset, "float": float}
CHECK_OUTPUT_FACTOR = 2  # an output equal to a gold may print longer (1.0 for 1): room beyond max_output_chars


class NotLiteral(ValueError):
    pass


def literal_node(node, depth=0):
    """The value of an expression node that is a literal, else NotLiteral."""
    kind = _type(node)
    if depth > MAX_NESTING:
        raise NotLiteral(f"containers nested more than {MAX_NESTING} deep")
    if kind is ast.Tuple or kind is ast.List or kind is ast.Set:
        items = [literal_node(e, depth + 1) for e in node.elts]
        return tuple(items) if kind is ast.Tuple else items if kind is ast.List else _set(items)
    if kind is ast.Dict:
        if None in node.keys:
            raise NotLiteral("it uses **-unpacking")
        return {literal_node(k, depth + 1): literal_node(v, depth + 1) for k, v in zip(node.keys, node.values)}
    if kind is ast.Call:
        return literal_call(node, depth)
    if kind is ast.UnaryOp and _type(node.op) in (ast.USub, ast.UAdd) and _type(node.operand) is ast.Call:
        value = literal_call(node.operand, depth)
        if _type(value) is not float:
            raise NotLiteral("a sign applies to a number only")
        return -value if _type(node.op) is ast.USub else value
    if kind is ast.Constant or kind is ast.UnaryOp or kind is ast.BinOp:
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, _SyntaxError, RecursionError):
            raise NotLiteral("it uses an operator") from None
    raise NotLiteral(f"it uses {kind.__name__}")


def literal_call(node, depth):
    name = node.func.id if _type(node.func) is ast.Name else None
    args = node.args
    if not node.keywords and (name == "set" and not args or name == "frozenset" and _len(args) <= 1):
        return frozenset(literal_node(args[0], depth + 1)) if args else _set() if name == "set" else frozenset()
    if name == "float" and not node.keywords and _len(args) == 1 and _type(args[0]) is ast.Constant \
            and _type(args[0].value) is str and args[0].value.strip().lower() in _FLOAT_SPECIALS:
        return float(args[0].value)
    raise NotLiteral(f"it calls {name or 'an expression'!r}")


def parse_literal_text(text, source, what, status):
    """The AST of a literal text (or f(...) source), or Failure(status) when it is too long or does not parse."""
    if _len(text) > MAX_LITERAL_CHARS:
        raise Failure(status, f"{what} is not a literal: {_len(text)} characters, more than {MAX_LITERAL_CHARS}")
    try:
        return ast.parse(source, mode="eval")
    except (_SyntaxError, ValueError, RecursionError, _MemoryError) as exc:
        raise Failure(status, f"{what} is not a literal: it does not parse: {exc}", _type(exc).__name__) from None


def literal_value(text, what, status="not_literal"):
    """The value of a literal text; Failure(status) when it is not one."""
    try:
        return literal_node(parse_literal_text(text, text.strip(), what, status).body)
    except (NotLiteral, TypeError) as exc:  # TypeError: an unhashable set element or dict key
        raise Failure(status, f"{what} is not a literal: {exc}") from None


def literal_arguments(text):
    """Compiled code that evaluates an abduction answer's literal arguments to (args, kwargs)."""
    tree = parse_literal_text(text, "f(" + text + "\n)", "answer", "not_literal")
    call = tree.body
    try:
        if not (_type(call) is ast.Call and _type(call.func) is ast.Name and call.func.id == "f"):
            raise NotLiteral("it is not the argument list of one call f(...)")
        names = [keyword.arg for keyword in call.keywords]
        if None in names or _len(_set(names)) < _len(names):
            raise NotLiteral("it uses **-unpacking or repeats a keyword")
        for node in [*call.args, *(keyword.value for keyword in call.keywords)]:
            literal_node(node)
        call.func.id = "_arguments"
        return _compile(tree, "<answer>", "eval")
    except (NotLiteral, TypeError, _SyntaxError, ValueError, RecursionError) as exc:
        raise Failure("not_literal", f"answer is not a literal argument list: {exc}") from None


def _arguments(*args, **kwargs):
    return args, kwargs


def literal_deduction(job):
    """A deduction answer under the literal rule, decided here: two literals compared, nothing run."""
    gold = literal_value(job["gold"], "gold output", "malformed")
    return {"status": "ok", "correct": gold == literal_value(job["answer"], "answer")}


def judge_outputs(verdict, golds):
    """A literal-rule check's answer from the child's output reprs, compared by value with the golds."""
    if verdict["status"] == "bad_output":  # the answer made f return something no gold can equal
        return {"status": "ok", "correct": False, "error": verdict["error"]}
    if verdict["status"] != "ok":
        return verdict
    for number, (text, gold) in enumerate(zip(verdict["outputs"], golds)):
        try:
            value = literal_value(text, f"output {number}")
        except Failure as exc:
            return {"status": "ok", "correct": False, "error": exc.error}
        if value != gold:
            return {"status": "ok", "correct": False}
    return {"status": "ok", "correct": True}


def run_outputs(job, scope, limit):
    """A check under the literal rule: f's output repr per call; the server compares them with the golds."""
    load_program(job["program"], scope)
    outputs = []
    for call in job["calls"]:
        if job["packed"]:  # an abduction answer: literal arguments, evaluated apart from the program
            args, kwargs = _eval(call, {"__builtins__": _LITERAL_BUILTINS, "_arguments": _arguments})
            value = scope["f"](*args, **kwargs)
        else:
            value = _eval(call, scope)
        outputs.append(output_repr(value, limit * CHECK_OUTPUT_FACTOR))
    return {"outputs": outputs}


def equal_plain(gold, value):
    return is_plain(value) and gold == value


def run_deduction(job, scope, limit):
    gold = _eval(job["gold"], {"__builtins__": _RESTORE_NAMES})
    answer = _eval(job["answer"], scope)
    return {"correct": equal_plain(gold, answer)}


def abduction_call(answer):
    """CRUXEval's rule: `f(...)` call text is used as is; anything else is argument text for f."""
    try:
        body = ast.parse(answer.strip(), mode="eval").body
    except (_SyntaxError, ValueError):
        body = None
    is_call = _type(body) is ast.Call and _type(body.func) is ast.Name and body.func.id == "f"
    return answer if is_call else "f(" + answer + "\n)"


def run_abduction(job, scope, limit):
    gold = _eval(job["gold"], {"__builtins__": _RESTORE_NAMES})
    load_program(job["program"], scope)
    return {"correct": equal_plain(gold, _eval(job["call"], scope))}


def run_induction(job, scope, limit):
    load_program(job["program"], scope)
    for call, gold_code in zip(job["calls"], job["golds"]):
        gold = _eval(gold_code, {"__builtins__": _RESTORE_NAMES})
        if not equal_plain(gold, _eval(call, scope)):
            return {"correct": False}
    return {"correct": True}


def compile_job(job):
    """(what a child needs to run a job, gold values the server compares its outputs with, or None).

    Compiled here in the server, so the child only executes: compiling in a freshly forked child was
    a third of its cost (the compiler's allocations land on copy-on-write pages). Compiling runs none
    of the program. Raises Failure (syntax, not_literal, or malformed for a gold that is not a literal).
    A job without its own banned list gets None: the child then uses the zygote's copy of the
    config's list (unmarshalling 39 names in each child was 18 page faults).
    """
    kind = job["kind"]
    compiled = {"kind": kind, "runs": job.get("runs", 1), "banned": frozenset(map(module_key, job["banned"])) if "banned" in job else None}
    if kind != "deduction":
        compiled["program"] = compile_program(job["program"])
    if kind in ("validate", "induction"):
        compiled["calls"] = [compile_expression("f(" + text + "\n)", f"input {n}") for n, text in enumerate(job["inputs"])]
    if kind in ("abduction", "induction") and not job.get("expressions"):
        golds = [job["gold"]] if kind == "abduction" else job["golds"]
        expected = [literal_value(text, f"gold output {n}", "malformed") for n, text in enumerate(golds)]
        if kind == "abduction":
            compiled["calls"] = [literal_arguments(job["answer"])]
        compiled.update(kind="outputs", packed=kind == "abduction")
        return compiled, expected
    if kind == "induction":
        compiled["golds"] = [compile_expression(text, f"gold output {n}") for n, text in enumerate(job["golds"])]
    if kind in ("deduction", "abduction"):
        compiled["gold"] = compile_expression(job["gold"], "gold output")
    if kind == "deduction":
        compiled["answer"] = compile_expression(job["answer"], "answer")
    if kind == "abduction":
        compiled["call"] = compile_expression(abduction_call(job["answer"]), "answer")
    return compiled, None


RUNNERS = {"validate": run_validate, "deduction": run_deduction, "abduction": run_abduction, "induction": run_induction,
           "outputs": run_outputs}


def limit_zygote(config):
    """Limits every child inherits, set once: address space, file size, open files, no core, the user."""
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (config["memory_mb"] * mb, config["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_size_mb"] * mb, config["file_size_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (config["open_files"], config["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:  # the kernel's OOM killer takes the zygote and its children before the server
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        os.write(fd, b"1000")
        os.close(fd)
    except OSError:
        pass
    if config["parent_death_signal"] and _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server


def limit_child(config):
    """Per-process limits (CPU time, processes: RLIMIT_NPROC counts the whole user) and the user.

    Children of a root runner (process backend) become child_uid here, so they can signal neither
    the zygote nor the server.
    """
    if config["child_uid"] is not None:
        os.setgroups([])
        os.setgid(config["child_uid"])
        os.setuid(config["child_uid"])
    cpu = int(config["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (config["processes"], config["processes"]))
    if config["parent_death_signal"] and _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the zygote


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


STATUSES = {"ok", "error", "timeout", "memory", "killed", "banned", "impure", "syntax", "not_literal", "nondeterministic",
            "bad_output", "malformed"}


def child_main(payload, result_fd, config):
    """Runs in a child forked by the zygote, writes the result on fd 3; the caller must _exit whatever happens.

    stdin/stdout/stderr are already /dev/null (the zygote's own). The job is unmarshalled here, not
    in the zygote: the zygote's pages are shared with its running children, so every object it
    makes costs a page copy of its own.
    """
    global _banned, _armed
    try:
        os.setpgid(0, 0)
        os.dup2(result_fd, 3)
        os.closerange(4, 1 << 20)  # the zygote's socket and other children's descriptors included
        limit_child(config)
        if config["workdir"]:
            os.chdir(config["workdir"])
        job = _loads(payload)
        _banned = _default_banned if job["banned"] is None else job["banned"]
    except BaseException as exc:  # cannot set up the limits: refuse to run the program
        _write(3, encode_result("killed", "", f"sandbox setup failed: {exc!r}"))
        return
    try:
        _armed = bool(_banned)  # an empty banned list turns the purity guards off too (tests of the limits)
        answer = RUNNERS[job["kind"]](job, program_globals(), config["max_output_chars"])
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
    if _hits:  # even when the program caught the ImportError
        data = encode_result("banned", "ImportError", f"imports banned module {_hits[0]!r}")
    elif _impure:  # even when the program caught the ImpureAction
        data = encode_result("impure", "ImpureAction", f"{_impure[0]}: a task must be a pure function of its input")
    view = memoryview(data)
    while view:
        view = view[_write(3, view) :]


# ---------------------------------------------------------------- the zygote: forks children, nothing else
#
# Forking from the server itself would make every page the server touches between forks a
# copy-on-write fault; the zygote touches almost nothing, so a child costs little more than fork+exit.
# Server -> zygote: one SEQPACKET message per job (sequence number + marshalled job) carrying the
# write end of the job's result pipe. Zygote -> server: EVENT records (started / exited).

EVENT = struct.Struct("<qqqdq")  # kind (1 started, 2 exited, 3 fork failed), sequence, pid or wait status, cpu seconds, max RSS KiB
HEADER = struct.Struct("<qq")  # sequence, 1 when the job runs alone (see Server.start_children)
MAX_JOB_BYTES = 150_000  # one SEQPACKET message (the default socket buffer is about 200 KiB)


WARM_UP_JOBS = [
    {"kind": "validate", "program": "def f(xs):\n    return sorted(set(xs)), {'n': len(xs), 'r': 1.5}", "inputs": ["[3, 1, 2, 3]"], "runs": 2},
    {"kind": "deduction", "gold": "[1, (2, 'a')]", "answer": "[1, (2, 'a')]", "expressions": True},
    {"kind": "abduction", "program": "def f(xs, k=1):\n    return [x * k for x in xs]", "answer": "[1, 2], k=2", "gold": "[2, 4]"},
]


def warm_up(config):
    """Run the children's code paths a few times in the zygote, on our own programs.

    Python 3.11 specialises bytecode while it runs it; a child that inherits settled code writes
    (and so copies) fewer pages than one that specialises the runner's functions afresh.
    """
    jobs = [_loads(_marshal_dumps(compile_job(job)[0])) for job in WARM_UP_JOBS]
    for _ in range(50):
        for job in jobs:
            answer = RUNNERS[job["kind"]](job, program_globals(), config["max_output_chars"])
            encode_result("ok", outputs=answer.get("outputs", ()))
    _keep_alive.clear()


def zygote_main(control, config):
    """Fork a child per job message; report starts and exits; kill processes that escape."""
    global _default_banned
    _default_banned = frozenset(map(module_key, config["banned"]))
    warm_up(config)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the server's protocol streams are none of a child's business
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    limit_zygote(config)
    install_purity_guards()
    gc.collect()
    gc.freeze()  # what warm-up and the guards made: a child's collections then leave their pages alone
    if _libc is not None:
        _libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: escaped grandchildren are re-parented to us
    poller = select.poll()
    poller.register(control, select.POLLIN)
    control_fd = control.fileno()
    buffer = bytearray(MAX_JOB_BYTES + 64)  # reused: a fresh 150 KB buffer per message is an mmap and its faults
    fd_space = socket.CMSG_SPACE(4)
    running = {}  # pid -> (sequence, pidfd)
    last_scan, dirty = time.monotonic(), False
    # Every page this loop writes between two forks is a page fault (the previous child shares it),
    # so it makes few objects and raises no exceptions on the usual paths.
    exited = False  # a pidfd fired, or a killed process group may have left zombies to collect
    while True:
        timeout = max(0.0, last_scan + ORPHAN_SCAN_SECONDS - time.monotonic()) * 1000 if dirty else None
        for fd, _ in poller.poll(timeout):
            if fd != control_fd:
                exited = True  # a child's pidfd: it has exited, reap() below collects it
                continue
            size, ancillary, _, _ = control.recvmsg_into([buffer], fd_space)
            if not size:
                _exit(0)  # the server is gone
            sequence, alone = HEADER.unpack_from(buffer)
            result_fd = struct.unpack_from("i", ancillary[0][2])[0]
            if alone and not running:
                settle()
            try:
                pid = os.fork()
            except OSError as exc:  # no process to be had (a container's pids limit full): the server tries again
                os.close(result_fd)
                control.send(EVENT.pack(3, sequence, exc.errno, 0.0, 0))
                continue
            if pid == 0:
                try:
                    child_main(memoryview(buffer)[HEADER.size : size], result_fd, config)
                finally:
                    _exit(0)  # never fall back into the zygote loop
            os.close(result_fd)
            pidfd = os.pidfd_open(pid)
            running[pid] = (sequence, pidfd)
            poller.register(pidfd, select.POLLIN)
            control.send(EVENT.pack(1, sequence, pid, 0.0, 0))
            dirty = True
        if exited:
            exited = reap(running, poller, control)
        if dirty and time.monotonic() - last_scan >= ORPHAN_SCAN_SECONDS:
            last_scan, dirty = time.monotonic(), kill_orphans(running)
            exited = exited or dirty  # the orphans it killed become zombies for reap() to collect


def reap(running, poller, control):
    """Collect exited children (report each, kill what is left of its group) and adopted orphans.

    Orphans are reaped at once too: a zombie still counts against the user's process limit. Returns
    True when a killed group may still leave zombies, so that the next pass looks again.
    """
    killed = False
    while True:
        try:
            pid, status_code, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return killed
        if pid not in running:
            continue  # an orphaned grandchild we adopted
        sequence, pidfd = running.pop(pid)
        poller.unregister(pidfd)
        os.close(pidfd)
        killed = kill_group(pid) or killed
        control.send(EVENT.pack(2, sequence, status_code, usage.ru_utime + usage.ru_stime, usage.ru_maxrss))


def settle(seconds=1.0):
    """Before a job that runs alone: wait (a second at most) until what is left of earlier jobs is reaped.

    Killed processes count against the user's process limit until they are collected.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                kill_orphans({})
                time.sleep(0.002)
        except ChildProcessError:
            return


def kill_orphans(children):
    """Kill processes that escaped a child's process group and were re-parented to us; True if any."""
    me, found = os.getpid(), False
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return False
    for pid in pids:
        if pid == me or pid in children:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                ppid = int(fh.read().rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            found = True  # scan again until it is gone
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return found


# ---------------------------------------------------------------- the server: protocol, deadlines, answers


class Child:
    def __init__(self, job_id, payload, alone, golds, fd, deadline):
        self.job_id, self.payload, self.alone, self.fd, self.deadline = job_id, payload, alone, fd, deadline
        self.golds = golds  # values the child's outputs must equal (a literal-rule check), else None
        self.pid = None
        self.data = bytearray()
        self.started = time.monotonic()
        self.timed_out = False
        self.shared = False  # another child ran beside it at some point (they share the process limit)


def a_neighbour_may_have_caused(verdict):
    """A failure a program running beside this one can cause: a kill, or no process or thread to be
    had because the user's process limit was reached."""
    if verdict["status"] == "killed":
        return True
    error = verdict.get("error") or ""
    return verdict["status"] == "error" and (
        verdict.get("error_type") == "BlockingIOError" or error.startswith("RuntimeError: can't start new thread")
    )


def child_verdict(child, status_code, cpu, maxrss_kb, config):
    """The job's answer from what the child wrote and how it ended."""
    if child.timed_out:
        return {"status": "timeout", "error": f"wall-clock limit of {config['timeout_seconds']} s reached"}
    if os.WIFSIGNALED(status_code):
        sig = os.WTERMSIG(status_code)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= config["cpu_seconds"]):
            return {"status": "timeout", "error": f"CPU-time limit of {config['cpu_seconds']} s reached"}
        if sig == signal.SIGXFSZ:
            return {"status": "error", "error": f"file-size limit of {config['file_size_mb']} MiB reached", "error_type": "SIGXFSZ"}
        if sig == signal.SIGKILL and maxrss_kb * 1024 >= 0.9 * config["memory_mb"] * 1024 * 1024:
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
    if "banned" in line and not isinstance(line["banned"], list):
        return f"{kind} job field 'banned' must be a list"
    for field in ("inputs", "golds", "banned"):
        if field in line and not all(isinstance(item, str) for item in line[field]):
            return f"{kind} job field {field!r} must be a list of strings"
    if not isinstance(line.get("expressions", False), bool):
        return f"{kind} job field 'expressions' must be true or false"
    if kind == "validate" and line["runs"] < 1:
        return "validate job field 'runs' must be >= 1"
    if kind == "induction" and len(line["inputs"]) != len(line["golds"]):
        return "induction job needs as many gold outputs as inputs"
    return None


class Server:
    """Reads jobs from stdin, has the zygote run each in a forked child, writes answers to stdout."""

    def __init__(self, config):
        self.config = config
        self.poller = select.epoll()
        self.handlers = {}  # fd -> (method, argument) to call when it is ready
        self.queue = collections.deque()
        self.children = {}  # sequence -> Child
        self.sequence = 0
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.stdin_open = True
        self.fork_retry_at = 0.0  # no job starts before this (monotonic): the zygote could not fork
        os.set_blocking(0, False)
        os.set_blocking(1, False)
        self.watch(0, select.EPOLLIN, self.read_stdin)
        self.spawn_zygote()

    def watch(self, fd, events, method, argument=None):
        self.poller.register(fd, events)
        self.handlers[fd] = (method, argument)

    def unwatch(self, fd):
        self.poller.unregister(fd)
        del self.handlers[fd]

    def spawn_zygote(self):
        server_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.zygote = os.fork()
        if self.zygote == 0:
            server_end.close()
            try:
                zygote_main(zygote_end, self.config)
            finally:
                _exit(0)
        zygote_end.close()
        self.control = server_end
        self.watch(server_end.fileno(), select.EPOLLIN, self.zygote_event)

    def zygote_died(self):
        """A program killed the zygote (it shares the children's user in a container): start another.

        What ran beside another program runs again alone (see start_children); what ran alone killed it.
        """
        for child in self.children.values():
            if child.pid:
                kill_group(child.pid)
            if child.fd is not None:
                self.close_pipe(child)
            if child.shared:
                self.rerun_alone(child)
            else:
                self.send({"id": child.job_id, "status": "killed", "error": "the program killed the sandbox zygote", "seconds": 0.0})
        self.children.clear()
        self.stop_zygote()
        self.spawn_zygote()

    def stop_zygote(self):
        self.unwatch(self.control.fileno())
        self.control.close()  # a live zygote sees EOF and exits
        try:
            os.waitpid(self.zygote, 0)
        except ChildProcessError:
            pass
        self.reap_adopted()

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
        registered = 1 in self.handlers
        if self.outbuf and not registered:
            self.watch(1, select.EPOLLOUT, self.flush)
        elif not self.outbuf and registered:
            self.unwatch(1)

    def read_stdin(self):
        try:
            data = os.read(0, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.stdin_open = False
            self.unwatch(0)
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
        try:
            if job["kind"] == "deduction" and not job.get("expressions"):
                self.send({"id": job.get("id"), **literal_deduction(job), "seconds": 0.0})
                return
            compiled, golds = compile_job(job)
            payload = _marshal_dumps(compiled)
        except Failure as exc:
            self.send({"id": job.get("id"), "status": exc.status, "error": exc.error, "error_type": exc.error_type, "seconds": 0.0})
            return
        except (RecursionError, _MemoryError, ValueError, TypeError) as exc:  # the compiler gave up: not a usable job
            self.send({"id": job.get("id"), "status": "malformed", "error": f"cannot compile the job: {_type(exc).__name__}: {exc}"[:500], "seconds": 0.0})
            return
        if len(payload) > MAX_JOB_BYTES:
            self.send({"id": job.get("id"), "status": "malformed", "error": f"job is {len(payload)} bytes compiled; the limit is {MAX_JOB_BYTES}"})
            return
        self.queue.append((job.get("id"), payload, 0, golds))

    def start_children(self):
        """Start queued jobs in free slots. A job marked alone waits for the others and runs by itself.

        Children share one user, so a program can make the one beside it fail: by forking up to the
        process limit (the other cannot fork or start a thread) or by killing it or the zygote. Such a
        failure need not be the program's own when others ran beside it: zygote_event and zygote_died
        queue it again, alone, and only that run's answer counts.
        """
        if time.monotonic() < self.fork_retry_at:
            return
        while self.queue and len(self.children) < self.config["slots"]:
            if (self.queue[0][2] and self.children) or any(child.alone for child in self.children.values()):
                return
            job_id, payload, alone, golds = job = self.queue.popleft()
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            self.sequence += 1
            try:
                socket.send_fds(self.control, [HEADER.pack(self.sequence, alone) + payload], [write_fd])
            except OSError:  # the zygote is dead: its EOF is next; this job waits for the new one
                os.close(read_fd), os.close(write_fd)
                self.queue.appendleft(job)
                self.sequence -= 1
                return
            os.close(write_fd)
            os.set_blocking(read_fd, False)
            child = Child(job_id, payload, alone, golds, read_fd, time.monotonic() + self.config["timeout_seconds"])
            if self.children:
                child.shared = True
                for other in self.children.values():
                    other.shared = True
            self.children[self.sequence] = child
            self.watch(read_fd, select.EPOLLIN, self.drain, child)

    def rerun_alone(self, child):
        """Queue the child's job first in line, to run by itself (see start_children)."""
        self.queue.appendleft((child.job_id, child.payload, 1, child.golds))

    def drain(self, child):
        while child.fd is not None:
            try:
                data = os.read(child.fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                self.close_pipe(child)
                return
            child.data += data
            if len(child.data) > 4 * self.config["max_output_chars"] + 65536:
                child.data.clear()  # more than any result can be: the program is writing junk
                if child.pid:
                    kill_group(child.pid)

    def close_pipe(self, child):
        self.unwatch(child.fd)
        os.close(child.fd)
        child.fd = None

    def zygote_event(self):
        try:
            message = self.control.recv(EVENT.size)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:
            self.zygote_died()
            return
        kind, sequence, value, cpu, maxrss = EVENT.unpack(message)
        child = self.children.get(sequence)
        if child is None:
            return
        if kind == 1:
            child.pid = value
            return
        del self.children[sequence]
        if kind == 3:  # the zygote could not fork: no fault of the program, which has not run; again shortly
            if child.fd is not None:
                self.close_pipe(child)
            self.queue.appendleft((child.job_id, child.payload, child.alone, child.golds))
            self.fork_retry_at = time.monotonic() + FORK_RETRY_SECONDS
            return
        self.drain(child)
        if child.fd is not None:
            self.close_pipe(child)
        verdict = child_verdict(child, value, cpu, maxrss, self.config)
        if child.shared and a_neighbour_may_have_caused(verdict):
            self.rerun_alone(child)
            return
        if child.golds is not None:
            verdict = judge_outputs(verdict, child.golds)
        verdict["seconds"] = round(time.monotonic() - child.started, 6)
        self.send({"id": child.job_id, **verdict})

    def enforce_deadlines(self):
        now = time.monotonic()
        for child in self.children.values():
            if not child.timed_out and now >= child.deadline and child.pid:
                child.timed_out = True
                kill_group(child.pid)

    def timeout(self):
        """Seconds until the next deadline; None to wait for input."""
        now = time.monotonic()
        waits = [c.deadline - now for c in self.children.values() if not c.timed_out]
        if self.queue and self.fork_retry_at > now:
            waits.append(self.fork_retry_at - now)
        if self.children and not waits:
            return 0.05  # killed children not reported yet
        return max(0.0, min(waits)) if waits else None

    def reap_adopted(self):
        """Collect the server's exited children besides the zygote's. As PID 1 of a container the server
        inherits every process orphaned there (say, children of one `docker exec` started), and each
        zombie counts against the container's pids limit until collected: left, they filled it. (The
        zygote, when collected here, has died: its closed socket tells zygote_event.)"""
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    return
            except ChildProcessError:
                return

    def serve(self):
        while self.stdin_open or self.queue or self.children:
            self.reap_adopted()
            self.start_children()
            self.flush()
            timeout = self.timeout()
            for fd, _ in self.poller.poll(-1 if timeout is None else timeout):
                handler = self.handlers.get(fd)  # None when an earlier handler closed it
                if handler is not None:
                    method, argument = handler
                    method() if argument is None else method(argument)
            self.enforce_deadlines()
        os.set_blocking(1, True)
        self.flush()


def kill_group(pid):
    """SIGKILL a process group; True when it still had a process."""
    if _libc is not None:  # no OSError to build when the group is already gone, the usual case
        return _libc.killpg(pid, 9) == 0
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        return False
    return True


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
    os.execve(sys.executable, [sys.executable, "-S", os.path.abspath(__file__), *sys.argv[1:]], env)


def connect_stdio(argv):
    """`--connect PATH`: talk over the Unix socket at PATH instead of stdin/stdout (docker's socket transport)."""
    if not argv:
        return
    if len(argv) != 2 or argv[0] != "--connect":
        sys.stderr.write(f"usage: runner.py [--connect SOCKET_PATH], got {argv}\n")
        sys.exit(2)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(argv[1])
    os.dup2(connection.fileno(), 0)
    os.dup2(connection.fileno(), 1)
    connection.close()


def main():
    ensure_fixed_hash_seed()
    connect_stdio(sys.argv[1:])
    config, rest = read_config()
    network = unshare_network() if config["unshare_net"] else None
    gc.collect()
    gc.freeze()  # children then do not copy-on-write every page when they collect
    server = Server(config)
    server.inbuf += rest
    server.send({"hello": {"python": sys.version.split()[0], "pid": os.getpid(), "uid": os.getuid(), "network": network}})
    server.accept_lines()
    server.serve()
    server.stop_zygote()


if __name__ == "__main__":
    main()
