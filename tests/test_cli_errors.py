"""Every command answers a bad command line the same way: one `error:` line naming the fix, exit status 2, no
traceback and no help dump (vidjax.cli: parse_flags and run for the absl programs, ArgumentParser for the others).

The commands run as a user runs them (subprocesses), all started at once: each fails at flag parsing or just
after, before any compilation, so the batch costs about one interpreter start-up per core.
"""

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

from vidjax import cli

ROOT = pathlib.Path(__file__).parent.parent

# name: (module, arguments, what the error line must say, what the output must not say)
CASES = {
    "main_missing_config": ("vidjax.main", ["--config=no_such_config.py:runlocal", "--workdir=WORKDIR"],
                            ["--config=no_such_config.py:runlocal: no such config file", "configs/"], []),
    "main_missing_config_with_override": (
        "vidjax.main", ["--config=no_such_config.py", "--config.batch_size=4", "--workdir=WORKDIR"],
        ["--config=no_such_config.py: no such config file"], []),
    "evaluate_missing_config": ("vidjax.evaluate", ["--config=no_such_config.py", "--checkpoint=WORKDIR"],
                                ["--config=no_such_config.py: no such config file"], []),
    "check_typo_in_config_key": ("vidjax.data.check", ["--config=configs/videomae_k400.py:runlocal",
                                                       "--config.data.nmu=3"],
                                 ["unknown config key 'nmu' in --config.data.nmu=3"], []),
    "check_unknown_flag": ("vidjax.data.check", ["--csv_file=x.csv"], ["Unknown command line flag 'csv_file'"], []),
    "check_missing_csv": ("vidjax.data.check", ["--csv=no_such_list.csv"],
                          ["--csv=no_such_list.csv: no such file", "give a video list file"],
                          ["config.data.train_csv", ":runlocal"]),
    "check_missing_folder": ("vidjax.data.check", ["--folder=no_such_folder"],
                             ["--folder=no_such_folder: no such folder"], []),
    "check_no_source": ("vidjax.data.check", [], ["exactly one of --config", "--csv", "--folder"], []),
    "bench_bad_variant": ("vidjax.bench", ["--variant=Q/9"], ["Unknown model variant 'Q/9'"], []),
    "bench_bad_model": ("vidjax.bench", ["--model=nope"], ["--model=nope: no such model", "videomae"], []),
    "bench_bad_size": ("vidjax.bench", ["--size=-3"], ["--size=-3 must be at least 1"], []),
    "bench_bad_remat": ("vidjax.bench", ["--remat=bogus"], ["--remat=bogus: each value must be one of"],
                        ["--variant: Variant string"]),  # the help text is not dumped
    "convert_missing_value": ("vidjax.convert", ["--out=OUT", "--from_hf"], ["--from_hf: expected one argument"],
                              ["usage:"]),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{case: CompletedProcess}, the cases run concurrently."""
    folder = tmp_path_factory.mktemp("cli_errors")
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")

    def run(name):
        module, args, _, _ = CASES[name]
        args = [a.replace("WORKDIR", str(folder / name)).replace("OUT", str(folder / f"{name}_out")) for a in args]
        return name, subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                                    text=True, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_and_exit_2(results, name):
    module, _, wanted, unwanted = CASES[name]
    proc = results[name]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # One line: the message, then the pointer to --help.
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert lines[0].endswith(f" Run `python -m {module} --help` for the flags."), output
    for text in wanted:
        assert text in lines[0], output
    for text in unwanted:
        assert text not in output, output


def test_flags_are_spelled_with_underscores_and_hyphens_still_work():
    known = {"num_classes", "class_names", "from_hf"}
    assert cli.canonical_flags(["--num-classes=3", "--class-names", "names.txt", "--from-hf=x", "--other-flag=1",
                                "--config.data.num-x=1", "--", "--num-classes"], known.__contains__) == [
        "--num_classes=3", "--class_names", "names.txt", "--from_hf=x", "--other-flag=1", "--config.data.num-x=1",
        "--", "--num-classes"]


def test_argparse_commands_share_the_spelling_and_the_error_line(capsys):
    from vidjax.commands import predict

    # --top-k is --top_k: the value is checked (exit 2, one line) rather than rejected as an unknown flag.
    assert predict.main(["--checkpoint=nowhere", "clip.mp4", "--top-k=0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --top_k=0 must be at least 1."
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint=nowhere", "clip.mp4", "--bogus"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage:" not in err
    assert err.splitlines() == ["error: unrecognized arguments: --bogus. Run `python -m vidjax.predict --help` for "
                                "the flags."]


def test_a_commands_start_checks_in_turn_then_loads(capsys):
    """`cli.start`, the start of predict's, extract's, probe's, zeroshot's, visualize's and the demo's `main`: the
    flags parsed, each check in turn (the first problem is the one `error:` line, and nothing after it runs), then the
    loader, which prints its own line and gives None; either way `main` gets None and returns 2."""
    parser = cli.ArgumentParser("python -m vidjax.example")
    parser.add_argument("--n", type=int, default=1)
    calls = []

    def positive(args):
        calls.append("positive")
        return None if args.n > 0 else f"--n={args.n} must be positive."

    def small(args):
        calls.append("small")
        return None if args.n < 10 else f"--n={args.n} is too large."

    def load(args):
        calls.append("load")
        if args.n == 5:
            print("error: --n=5: no such model.", file=sys.stderr)
            return None
        return f"model {args.n}"

    for argv, err, ran in ((["--n=0"], "error: --n=0 must be positive.\n", ["positive"]),
                           (["--n=10"], "error: --n=10 is too large.\n", ["positive", "small"]),
                           (["--n=5"], "error: --n=5: no such model.\n", ["positive", "small", "load"])):
        calls.clear()
        assert cli.start(parser, argv, positive, small, load=load) is None
        assert calls == ran and capsys.readouterr().err == err
    started = cli.start(parser, ["--n=3"], positive, small, load=load)
    assert started is not None and started[0].n == 3 and started[1] == "model 3"
    started = cli.start(parser, ["--n=3"], positive)
    assert started is not None and started[0].n == 3 and started[1] is None
    assert capsys.readouterr() == ("", "")
