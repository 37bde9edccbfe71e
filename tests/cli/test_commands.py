"""The command line's convention: `cli/main.py` is the parser and the dispatcher, one small `add_<command>` per
command, and every command's code in a module of `prunenas/cli/` loaded by name when the command runs."""
import argparse
import ast
import subprocess
import sys
from pathlib import Path

from prunenas.cli.main import build_parser, command_function

CLI = Path(__file__).resolve().parents[2] / "prunenas" / "cli"


def leaf_parsers(parser):
    """(command words, parser) of every command that runs something (``arch list`` is two words)."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        return [((), parser)]
    return [((name, *words), leaf) for name, sub in actions[0].choices.items() for words, leaf in leaf_parsers(sub)]


def test_every_command_names_a_function_of_a_cli_module():
    commands = leaf_parsers(build_parser())
    assert {words[0] for words, _ in commands} == {
        "spaces", "info", "uniform", "train", "proposers", "propose", "search", "submit", "resume", "status",
        "report", "export", "arch", "doctor", "cache", "latency"}
    for words, parser in commands:
        function = command_function(parser.get_default("run"))
        assert callable(function) and function.__module__.startswith("prunenas.cli."), words
        assert function.__module__ != "prunenas.cli.main", words


def test_main_is_small_functions_and_cli_files_are_short():
    for path in sorted(CLI.glob("*.py")):
        assert len(path.read_text().splitlines()) <= 400, path.name
    tree = ast.parse((CLI / "main.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno + 1 <= 60, node.name


def test_help_starts_without_torch_and_info_without_ray_optuna_matplotlib_or_scipy():
    probe = ("import sys\nfrom prunenas.cli.main import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print('torch after --help:', 'torch' in sys.modules)\n"  # --help needs no network library
             "main(['info', 'tiny-synthetic', '--json'])\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna', 'matplotlib', 'scipy'}))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"
    assert "torch after --help: False" in proc.stdout
