"""Command-line plumbing shared by every vidjax command: one flag spelling, one-line errors, exit status 2.

The absl programs (main, evaluate, bench, data.check, data.bench) start with `run(main)`, the argparse ones
(predict, extract, visualize, probe, convert, push, data.pack) build an `ArgumentParser`; predict, extract,
visualize, probe, zeroshot and demo start their `main` with `start` (the flags parsed and checked, then what they
run on loaded). Either way a flag is spelled with underscores (`--num_classes`; the hyphenated `--num-classes` is
accepted too), a config file may be given as `~/cfg.py`, and a mistake on the command line (unknown flag or config
key, bad value, missing config file, a usage error raised by the program) is one `error:` line naming the fix and
ending in a pointer to `--help`, with exit status 2, never a traceback or the whole help text.

Both switch on the persistent compilation cache (vidjax/compile_cache.py) once the command line is parsed, unless
`--nocompilation_cache` (`--compilation_cache=false`) or VIDJAX_CACHE_DIR=off says not to, and before that set the
host allocator for XLA:CPU to reuse each step's memory (vidjax/host_malloc.py; VIDJAX_HOST_MALLOC=system does not):
the one platform choice made here, before jax starts a backend (`import vidjax` makes another: libtpu kept quiet on
a machine that has it installed but no TPU chips, vidjax/tpu.py; vidjax/platform.py lists them all; the models' are
config values, resolved when a model is built).

Interruptions. Every command treats SIGINT (Ctrl-C) and SIGTERM (`kill`, a scheduler's notice) alike: while it runs,
either raises `Interrupted` in the main thread (`interruptible`, which `run` and `guard` install), and the command
answers with one line on stderr, `stopped by SIGINT: WHAT WAS KEPT; HOW TO RESUME` (`stopped`), and exit status
128 + the signal: 130 for SIGINT, 143 for SIGTERM. A command that keeps partial work (a `.partial` file of windows, a
sweep's points so far, a checkpoint) catches `Interrupted` where it knows what it kept and says so; one that keeps
nothing gets the generic line from `guard`. A second signal while the command winds down is not caught again (Python's
default then: Ctrl-C interrupts the wind-down, SIGTERM ends the process). The trainer is the one exception to the
status: it stops at the next step boundary with a checkpoint of that step and exits 4 (vidjax/preemption.py), which
the launch scripts and schedulers' requeue logic read.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from absl import app, flags, logging
from ml_collections.config_flags import config_flags

from vidjax import compile_cache, host_malloc
from vidjax.config_lib import ConfigError

_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")
_CACHE_HELP = (f"Keep compiled programs in ${compile_cache.ENV} (default $XDG_CACHE_HOME/vidjax/jax or "
               f"~/.cache/vidjax/jax) and load them in later runs instead of compiling again; "
               f"--nocompilation_cache or {compile_cache.ENV}=off turns it off.")


def _program(argv: list[str]) -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.startswith("vidjax."):  # `python -m vidjax.data.check`: the module's own name
        return spec.name.removesuffix(".__main__")
    name = os.path.basename(argv[0]) if argv else "main"
    return "vidjax." + (os.path.splitext(name)[0] if name.endswith(".py") and name != "__main__.py" else "main")


def _fail(message: str, program: str) -> NoReturn:
    """One line, the message and the pointer to --help, on stderr; exit status 2."""
    message = " ".join(str(message).split())
    end = "" if message.endswith((".", "?", "!", ")")) else "."
    print(f"error: {message}{end} Run `python -m {program} --help` for the flags.", file=sys.stderr)
    sys.exit(2)


def canonical_flags(args: Sequence[str], is_flag: Callable[[str], bool]) -> list[str]:
    """`--num-classes=3` -> `--num_classes=3` where the command defines `num_classes`: flags are spelled with
    underscores in every command, and the hyphenated spelling a person may type still works. Arguments after `--`
    and anything that is not a defined flag are left as they are."""
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        name, sep, value = arg[2:].partition("=")
        if arg.startswith("--") and "-" in name and "." not in name and is_flag(name.replace("-", "_")):
            arg = f"--{name.replace('-', '_')}{sep}{value}"
        out.append(arg)
    return out


def _config_file_flags() -> set[str]:
    return {name for name in flags.FLAGS
            if isinstance(flags.FLAGS[name].parser, config_flags.ConfigFileFlagParser)}


def _check_config_files(argv: list[str]) -> list[str]:
    """`--config=PATH[:args]` with `~` expanded; a PATH that is not a file is a one-line error (config_flags would
    defer it to a traceback at the first use of the config)."""
    names = _config_file_flags()
    out = list(argv)
    for i, arg in enumerate(argv[1:], start=1):
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name not in names:
            continue
        if not sep:  # `--config PATH`
            if i + 1 >= len(argv):
                continue
            i, value = i + 1, argv[i + 1]
        path, colon, config_args = value.partition(":")
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            _fail(f"--{name}={value}: no such config file ({os.path.abspath(path)}). Give a config file, e.g. "
                  f"--{name}=configs/videomae_k400.py:runlocal (the configs/ folder holds one per recipe, each "
                  f"documented in its docstring).", _program(argv))
        out[i] = f"--{name}={path}{colon}{config_args}" if sep else f"{path}{colon}{config_args}"
    return out


def describe_error(err: BaseException, argv: list[str]) -> str:
    """One clear line for a flag-parsing error: the ConfigError's own words, or the unknown key and its flag."""
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    config_errors = [e for e in chain if isinstance(e, ConfigError)]
    if config_errors:  # innermost: config_flags re-raises it with the whole traceback as its message
        return str(config_errors[-1])
    raised_by_file = _raised_in_config_file(chain[-1], argv)
    if raised_by_file:
        return raised_by_file
    for e in chain:
        if isinstance(e, KeyError) and e.args:
            text = str(e.args[0]).replace("\n", " ")
            key = text.split("'")[1] if text.count("'") >= 2 else text
            flag = next((a for a in argv if a.startswith("--config.") and f".{key}" in a.split("=")[0]), "--config")
            return f"unknown config key {key!r} in {flag}. {text.split(' ', 1)[-1] if ' ' in text else ''}".strip()
    return str(chain[0])


def _raised_in_config_file(err: BaseException, argv: list[str]) -> str | None:
    """The line for `err` raised by the code of a config file given on the command line (its `get_config`, a
    KeyError there included, which is not an unknown --config.KEY): the flag, the file's line and the error; None
    when it came from elsewhere."""
    files = {}
    names = _config_file_flags()
    for arg in argv[1:]:
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if sep and name in names:
            files[os.path.realpath(os.path.expanduser(value.partition(":")[0]))] = arg
    frames = [frame for frame in traceback.extract_tb(err.__traceback__)
              if os.path.realpath(frame.filename) in files]
    if not frames:
        return None
    frame = frames[-1]
    message = repr(err.args[0]) if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    return (f"{files[os.path.realpath(frame.filename)]}: the config file's {frame.name} raised "
            f"{type(err).__name__}: {message} at line {frame.lineno} of {frame.filename} (`{frame.line}`); fix the "
            f"file, or the argument after its ':'.")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config mistakes (unknown key, bad value, bad variant) as one-line errors (exit 2).

    Use as `app.run(main, flags_parser=parse_flags)`."""
    argv = [argv[0], *canonical_flags(argv[1:], lambda name: name in flags.FLAGS)] if argv else argv
    asks_help = any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:])
    if not asks_help:
        argv = _check_config_files(argv)
    try:
        return flags.FLAGS(argv)
    except SystemExit as exit_:
        # absl exits 1 after printing --help; asking for help is not a failure. Its other exits are flag errors.
        sys.exit(0 if asks_help else 2 if exit_.code else exit_.code)
    except (flags.Error, KeyError, ValueError, AttributeError) as err:
        _fail(describe_error(err, argv), _program(argv))


def configure_runtime(compilation_cache: bool) -> None:
    """The process settings every command starts with, before jax starts its backend: the host allocator
    (`host_malloc.configure`; a bad $VIDJAX_HOST_MALLOC is a `ConfigError`), then the compilation cache. (libtpu is
    kept quiet on a machine without TPU chips by `import vidjax` itself: `tpu.quiet_without_chips`.)"""
    try:
        host_malloc.configure()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    compile_cache.configure(compilation_cache)


def help_as_main(command: str) -> None:
    """Makes absl's --help show the module `command`'s docstring and flags: absl shows those of `__main__`, which
    for `python -m vidjax.NAME` is the entry module (`vidjax/NAME.py`), while the command and its flags live in
    `vidjax.commands`. Call it once the command's flags are defined."""
    module = sys.modules[command]
    main = sys.modules["__main__"]
    if module is main:
        return
    main.__doc__ = module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(command):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)  # absl names __main__'s flags by sys.argv[0]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a command ran (`interruptible`): a KeyboardInterrupt, so code that already
    cleans up after Ctrl-C (`finally`, context managers) does the same for SIGTERM."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports a process the signal ended: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


def as_interrupted(err: KeyboardInterrupt) -> Interrupted:
    """`err` as an `Interrupted`: a plain KeyboardInterrupt (raised by Python's own SIGINT handler) is SIGINT."""
    return err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)


_INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` in the main thread; the first one only: its handler
    then goes back to what it was before the block, so a second signal during the clean-up acts as it would without
    vidjax. A signal set to be ignored (nohup, a launcher) stays ignored; off the main thread this does nothing.

    A signal handler's exception is lost where Python drops exceptions: in a garbage-collection callback (jax's
    `_xla_gc_callback` runs often), a `__del__` or a weakref callback, which print "Exception ignored in ..." and go
    on. The command would then run to its end as if never signalled. So an `Interrupted` that reaches
    `sys.unraisablehook` is delivered again: the handler is put back and, 10 ms later from a timer thread,
    `_thread.interrupt_main` raises the signal once more in the main thread, until it lands in the command's code."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, object] = {}

    def handle(signum, frame):
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise Interrupted(signum)

    def unraisable(info):
        if isinstance(info.exc_value, Interrupted) and info.exc_value.signum in previous:
            signal.signal(info.exc_value.signum, handle)  # runs in the main thread: the one the handler ran in
            # From another thread, a moment later: raised now, it would land in this hook or the callback again.
            threading.Timer(0.01, _thread.interrupt_main, (info.exc_value.signum,)).start()
        else:
            previous_hook(info)

    for sig in _INTERRUPT_SIGNALS:
        current = signal.getsignal(sig)
        if current is not signal.SIG_IGN:
            previous[sig] = signal.SIG_DFL if current is None else current
    previous_hook = sys.unraisablehook
    try:
        for sig in previous:
            signal.signal(sig, handle)
        sys.unraisablehook = unraisable
        yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_stopped: list[int] = []  # the exit status `stopped` returned in this command, if it did


def stopped(err: KeyboardInterrupt, kept: str) -> int:
    """Prints the one line for an interrupted command, `stopped by SIGTERM: KEPT` (what was kept and how to resume
    or restart) on stderr, and returns the exit status for it (130 for SIGINT, 143 for SIGTERM)."""
    err = as_interrupted(err)
    print(f"stopped by {err.name}: {kept}", file=sys.stderr, flush=True)
    _stopped.append(err.exit_code)
    return err.exit_code


_NOTHING_KEPT = "nothing was written; run the same command again to start over."


_leave_hooks: list[Callable[[], None]] = []


def at_leave(hook: Callable[[], None]) -> None:
    """Runs `hook` when a stopped command ends through `leave` (which skips `atexit`): the clean-up that must not be
    skipped, registered by the layer that owns it."""
    if hook not in _leave_hooks:
        _leave_hooks.append(hook)


def leave(status: int) -> NoReturn:
    """Ends the process at once with `status`, its output flushed, without the interpreter's teardown: how a command
    that SIGINT or SIGTERM stopped exits, once its line is printed and what it keeps is written. The signal may have
    come while XLA compiled on its own threads (`PjRtCompiler::CompileAndLoad` on a thread pool, which the
    interrupted Python call no longer waits for); the teardown would destroy the PJRT client and its devices under
    that compile, which then crashes on them (a segmentation fault, exit 139, after the one line). Skipped with the
    teardown: `atexit` functions; what must still run goes to `at_leave` (the input pipeline's shared memory)."""
    for hook in _leave_hooks:
        try:
            hook()
        except Exception as err:  # noqa: BLE001 - leaving anyway: a clean-up that fails is reported, not raised
            print(f"warning: {getattr(hook, '__qualname__', hook)} failed while stopping: {err}", file=sys.stderr)
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _finish(status: int | None) -> NoReturn:
    """The command's exit: `leave` when it stopped for a signal (130 or 143), `sys.exit` otherwise."""
    if status and _stopped and status == _stopped[-1] and status in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        leave(status)
    sys.exit(status or 0)


def guard(main: Callable[[], int | None]) -> NoReturn:
    """`sys.exit(main())` for an argparse command, with SIGINT and SIGTERM raising `Interrupted` while it runs; one
    that escapes `main` (the command kept nothing it could name) is the generic one line and exit 130 or 143. A
    command stopped by a signal ends with `leave`."""
    _stopped.clear()
    try:
        with interruptible():
            status = main()
    except KeyboardInterrupt as err:
        status = stopped(err, _NOTHING_KEPT)
    _finish(status)


def run(main: Callable[[list[str]], int | None]) -> NoReturn:
    """`app.run(main)` for a vidjax absl program: flags parsed by `parse_flags`, absl logging at WARNING unless
    --verbosity is given; a `app.UsageError` or `ConfigError` escaping `main` is one `error:` line with exit 2
    (absl would print the whole help after it); otherwise the exit status is what `main` returns. --help shows the
    docstring and flags of `main`'s module (`help_as_main`). SIGINT and SIGTERM raise `Interrupted` while `main` runs;
    one that escapes it is the generic one line and exit 130 or 143 (see the module docstring); a command stopped by
    a signal ends with `leave`."""
    def wrapped(argv: list[str]) -> NoReturn:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # jax and orbax log routine steps at INFO; --verbosity=0 shows them
        try:
            configure_runtime(flags.FLAGS.compilation_cache)
            status = main(argv)
        except (app.UsageError, ConfigError) as err:
            _fail(str(err), _program(argv))
        except KeyboardInterrupt as err:
            status = stopped(err, _NOTHING_KEPT)
        _finish(status)

    if "compilation_cache" not in flags.FLAGS:
        flags.DEFINE_bool("compilation_cache", True, _CACHE_HELP)
    help_as_main(main.__module__)
    _stopped.clear()
    # The flags are parsed inside too: a config flag's file (or `evaluate`'s stored config) imports jax and flax, and a
    # signal while it does is the one line and 130 / 143 as well, not a traceback.
    try:
        with interruptible():
            app.run(wrapped, flags_parser=parse_flags)
    except KeyboardInterrupt as err:
        _finish(stopped(err, _NOTHING_KEPT))


def _parse_bool(value: str) -> bool:
    """An argparse `type` for BOOL flags, spelled as absl spells them: true/false, 1/0, yes/no."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "t", "y"):
        return True
    if lowered in ("false", "0", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean: use true or false")


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the vidjax commands: the module docstring shown as written, flags spelled with underscores
    (hyphenated spellings accepted, see `canonical_flags`), and a bad command line answered like the absl
    programs: one `error:` line ending in a pointer to --help, exit status 2 (argparse prints its usage block).
    Parsing a command line switches the persistent compilation cache on, or off with `--nocompilation_cache`."""

    def __init__(self, prog: str, description: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=prog, description=description, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        if "--compilation_cache" not in self._option_string_actions:  # added last: listed after the command's own
            self.add_argument("--compilation_cache", type=_parse_bool, nargs="?", const=True, default=True,
                              metavar="BOOL", help=_CACHE_HELP)
            self.add_argument("--nocompilation_cache", dest="compilation_cache", action="store_false",
                              help=argparse.SUPPRESS)
        args = sys.argv[1:] if args is None else list(args)
        namespace, extras = super().parse_known_args(
            canonical_flags(args, lambda name: f"--{name}" in self._option_string_actions), namespace)
        try:
            configure_runtime(namespace.compilation_cache)
        except ConfigError as err:
            self.error(str(err))
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        _fail(message, self.prog.removeprefix("python -m "))


def start(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
          *checks: Callable[[argparse.Namespace], str | None],
          load: Callable[[argparse.Namespace], Any] | None = None) -> tuple[argparse.Namespace, Any] | None:
    """The start of an argparse command's `main`: `argv` parsed by `parser` (a bad command line exits 2 there), each
    of `checks(args)` in turn, the first problem one returns (the text of the line, or None) printed as one `error:`
    line on stderr; then `load(args)`, which reads what the command runs on (e.g. `pretrained.load_for_command` of its
    --checkpoint) and gives None after printing its own `error:` line. Returns (args, what `load` gave, or None
    without `load`), or None once a line is printed: `main` then returns 2. (The loader is an argument: this module
    sits below the checkpoints.)"""
    args = parser.parse_args(argv)
    for check in checks:
        problem = check(args)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return None
    if load is None:
        return args, None
    loaded = load(args)
    return None if loaded is None else (args, loaded)
