"""`python <script> --help` for every CLI in training/ and eval/ (found by globbing, so a new script is covered
the day it lands) and app.py (skipped while it takes no options): it exits 0, prints a usage line, lists every
option of the config dataclass it parses, and answers before torch is imported (help should come at once)."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rlhflab import config as config_module

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["app.py", *sorted(str(p.relative_to(ROOT)) for folder in ("training", "eval")
                             for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py")]
CONFIG_USE = re.compile(r"parse_config\(\s*(\w+)")


CLI_USE = re.compile(r"from rlhflab\.cli import (\w+) as main")


def _source(script: str) -> str:
    """The script's own source, or for a thin script the source of the rlhflab.cli function it runs."""
    import inspect

    from rlhflab import cli

    source = (ROOT / script).read_text(encoding="utf-8")
    used = CLI_USE.search(source)
    return inspect.getsource(getattr(cli, used.group(1))) if used else source


def _parses_arguments(script: str) -> bool:
    """Whether the script has a --help at all (app.py has none: `python app.py --help` starts the server)."""
    source = _source(script)
    return "parse_config(" in source or "argparse" in source


@pytest.fixture(scope="module")
def help_runs() -> dict[str, subprocess.CompletedProcess]:
    """Every script's --help, run side by side (each is a short, mostly idle Python start-up)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}

    def run(script: str) -> subprocess.CompletedProcess:
        # -X importtime lists every module imported, on stderr: how the test sees whether torch was loaded
        return subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    scripts = [s for s in SCRIPTS if _parses_arguments(s)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(scripts, pool.map(run, scripts)))


def test_the_known_clis_are_found():
    assert {"training/reward.py", "training/ppo.py", "training/dcgan.py", "training/pipeline.py",
            "eval/evaluate.py", "eval/reward_model.py", "eval/gan.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_zero_and_lists_every_option(script, help_runs):
    if not _parses_arguments(script):
        pytest.skip(f"{script} takes no command-line options")
    proc = help_runs[script]
    errors = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))
    assert proc.returncode == 0, f"{script} --help exited {proc.returncode}:\n{errors[-3000:]}"
    assert "usage:" in proc.stdout and "Traceback" not in errors
    for name in CONFIG_USE.findall(_source(script)):
        cls = getattr(config_module, name)
        missing = [f.name for f in dataclasses.fields(cls) if "--" + f.name.replace("_", "-") not in proc.stdout]
        assert not missing, f"{script} --help does not list {cls.__name__}'s options {missing}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_does_not_import_torch(script, help_runs):
    if not _parses_arguments(script):
        pytest.skip(f"{script} takes no command-line options")
    imported = {line.rsplit("|", 1)[-1].strip() for line in help_runs[script].stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" not in imported, (f"{script} --help imports torch; import the library after parse_config "
                                     f"(as training/reward.py does) so --help answers at once")



def test_every_script_is_also_a_console_script_and_the_package_pins_what_requirements_pins():
    """pyproject.toml's console scripts run the same functions as the scripts, and its dependencies are
    requirements.txt's (the file a Space installs) word for word."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    targets = {v.split(":")[1] for v in project["scripts"].values()}
    for script in SCRIPTS:
        used = CLI_USE.search((ROOT / script).read_text(encoding="utf-8"))
        if script != "app.py":
            assert used and used.group(1) in targets, f"{script} is not a thin script over a console script's function"
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert project["dependencies"] == pins
