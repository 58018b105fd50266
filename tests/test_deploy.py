"""deploy/findimage.service: the systemd unit docs/operations.md installs."""

import asyncio
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "deploy" / "findimage.service"
INSTALLED = "/opt/findimage"


def directives(text: str) -> dict[str, list[str]]:
    """{"Section.Key": [values]} of a unit file (keys may repeat, as in systemd)."""
    found: dict[str, list[str]] = defaultdict(list)
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found[f"{section}.{key}"].append(value)
    return found


def test_unit_runs_the_bot_from_the_venv_hardened_with_state_and_secrets():
    unit = directives(UNIT.read_text())
    assert unit["Service.ExecStart"] == [f"{INSTALLED}/.venv/bin/python -m bot"]
    assert unit["Service.Type"] == ["notify"]  # started = online, with the model loaded
    assert unit["Service.SuccessExitStatus"] == ["130 143"]  # stopped during start-up
    assert unit["Service.StateDirectory"] == ["findimage"]
    assert any("DATA_DIR=%S/findimage" in v for v in unit["Service.Environment"])
    assert unit["Service.EnvironmentFile"] == ["/etc/findimage/findimage.env"]
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.RestartPreventExitStatus"] == ["2"]  # a wrong setting: no loop
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                      ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("DynamicUser", "yes"),
                      ("User", "findimage")):
        assert unit[f"Service.{key}"] == [want], key
    assert unit["Install.WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here (Debian: apt-get install "
                           "systemd); the unit's directives are still checked above")
def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path):
    # verify also checks that ExecStart's program exists: point it at this venv's python.
    unit = UNIT.read_text().replace(f"{INSTALLED}/.venv/bin/python", sys.executable)
    path = tmp_path / "findimage.service"
    path.write_text(unit.replace(f"WorkingDirectory={INSTALLED}", f"WorkingDirectory={ROOT}"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60)
    # verify exits 0 on directives it cannot parse, and only says so: any output fails.
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr


def test_systemd_analyze_reports_a_broken_directive(tmp_path):
    """The check above can fail: a misspelt value is reported."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    unit = UNIT.read_text().replace(f"{INSTALLED}/.venv/bin/python", sys.executable)
    path = tmp_path / "findimage.service"
    path.write_text(unit.replace("ProtectSystem=strict", "ProtectSystem=strickt")
                    .replace(f"WorkingDirectory={INSTALLED}", f"WorkingDirectory={ROOT}"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert "Failed to parse protect system value" in done.stderr


# -- the unit's own command, with the environment the unit gives it ---------------------
def resolve(value: str, state: Path, cache: Path) -> str:
    """systemd's specifiers for a system service: %S /var/lib, %C /var/cache, %% a %."""
    return value.replace("%S", str(state)).replace("%C", str(cache)).replace("%%", "%")


def unit_environment(unit: dict[str, list[str]], state: Path, cache: Path) -> dict[str, str]:
    """Environment= lines: space-separated assignments, quoted as systemd quotes them."""
    env: dict[str, str] = {}
    for line in unit["Service.Environment"]:
        for word in shlex.split(line):
            name, _, value = word.partition("=")
            env[name] = resolve(value, state, cache)
    return env


def environment_file(text: str) -> dict[str, str]:
    """EnvironmentFile= as systemd reads it: NAME=value lines, # and ; comments, quotes."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[name.strip()] = value
    return env


def filled_in(example: str, values: dict[str, str]) -> str:
    """.env.example as the README has the operator fill it in: values on its own lines."""
    lines = []
    for line in example.splitlines():
        name = line.partition("=")[0]
        lines.append(f"{name}={values[name]}" if name in values else line)
    return "\n".join(lines) + "\n"


async def test_the_unit_keeps_state_in_its_state_directory_with_the_readme_env_file(
        fake_discord, fake_pixabay, tmp_path):
    from tests.conftest import bot_env

    unit = directives(UNIT.read_text())
    state, cache = tmp_path / "var" / "lib", tmp_path / "var" / "cache"
    for root, key in ((state, "StateDirectory"), (cache, "CacheDirectory")):
        (root / unit[f"Service.{key}"][0]).mkdir(parents=True)  # systemd makes them
    checkout = tmp_path / "opt" / "findimage"  # WorkingDirectory: read-only under the unit
    checkout.mkdir(parents=True)
    # `sudo install -m 600 .env.example /etc/findimage/findimage.env`, then filled in (here
    # with the fakes and the test model)
    fill = bot_env(fake_discord, fake_pixabay, Path("unused"))
    fill.pop("DATA_DIR")
    env_file = filled_in((ROOT / ".env.example").read_text(), fill)
    env = {"PATH": "/usr/bin:/bin", **unit_environment(unit, state, cache),
           **environment_file(env_file)}  # the file wins over Environment=, as in systemd
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    (command,) = unit["Service.ExecStart"]
    argv = shlex.split(command.replace(f"{INSTALLED}/.venv/bin/python", sys.executable))
    assert unit["Service.WorkingDirectory"] == [INSTALLED]
    proc = await asyncio.create_subprocess_exec(*argv, cwd=checkout, env=env,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    loop = asyncio.get_running_loop()
    try:
        await fake_discord.wait_for(lambda: fake_discord.connected, 300,
                                    what="the service to come online")
        assert (state / "findimage" / "bot.sqlite3").is_file()
        assert (state / "findimage" / "search.sqlite3").is_file()
        assert not (checkout / "data").exists()
        said = (await asyncio.wait_for(loop.sock_recv(notify, 4096), 60)).decode()
        while "READY=1" not in said:  # STATUS= lines come first, then READY=1 once online
            said = (await asyncio.wait_for(loop.sock_recv(notify, 4096), 60)).decode()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        while "STOPPING=1" not in said:
            said = (await asyncio.wait_for(loop.sock_recv(notify, 4096), 10)).decode()
    finally:
        notify.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_env_example_leaves_out_what_the_unit_sets():
    unit = directives(UNIT.read_text())
    example = environment_file((ROOT / ".env.example").read_text())
    ours = unit_environment(unit, Path("/var/lib"), Path("/var/cache"))
    assert not set(ours) & set(example), set(ours) & set(example)


def test_the_check_as_the_service_runs_uses_the_units_own_properties():
    """deploy/check-as-service.sh: --check through systemd-run, as the unit would run it."""
    unit = directives(UNIT.read_text())
    script = (ROOT / "deploy" / "check-as-service.sh").read_text()
    words = shlex.split(script.replace("\\\n", " ").split("exec ", 1)[1])
    assert words[0] == "systemd-run" and "--wait" in words and "--pipe" in words
    props: dict[str, list[str]] = defaultdict(list)
    for word in words:
        if word.startswith("--property="):
            key, _, value = word[len("--property="):].partition("=")
            props[key].append(value)
    for key in ("User", "DynamicUser", "WorkingDirectory", "EnvironmentFile", "StateDirectory",
                "CacheDirectory", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert props[key] == unit[f"Service.{key}"], key
    # Environment= with the specifiers resolved (systemd-run does not expand them)
    assert [resolve(v, Path("/var/lib"), Path("/var/cache")) for v in
            unit["Service.Environment"]] == props["Environment"]
    (command,) = unit["Service.ExecStart"]
    assert words[-5:] == [*shlex.split(command), "--check", "$@"]


TEMPLATE = ROOT / "deploy" / "findimage@.service"


def test_template_unit_takes_its_shards_and_data_dir_from_the_instance_name():
    unit = directives(TEMPLATE.read_text())
    assert unit["Service.ExecStart"] == [f"{INSTALLED}/.venv/bin/python -m bot"]
    assert "SHARD_IDS=%i" in unit["Service.Environment"]
    assert any("DATA_DIR=%S/findimage/%i" in v for v in unit["Service.Environment"])
    assert unit["Service.StateDirectory"] == ["findimage/%i"]
    assert unit["Service.EnvironmentFile"] == ["/etc/findimage/findimage.env",
                                               "-/etc/findimage/%i.env"]
    assert unit["Service.RestartPreventExitStatus"] == ["2"]
    # the hardening is the single unit's
    single = directives(UNIT.read_text())
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                "DynamicUser", "User", "CapabilityBoundingSet", "RestrictAddressFamilies"):
        assert unit[f"Service.{key}"] == single[f"Service.{key}"], key


def test_the_instance_name_is_a_shard_range_the_settings_accept(tmp_path):
    from search.config import Settings

    settings = Settings.from_mapping({"SHARD_COUNT": "8", "SHARD_IDS": "4-7"})
    assert settings.shard_ids == (4, 5, 6, 7) and settings.processes == 2


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here (Debian: apt-get install "
                           "systemd)")
def test_systemd_analyze_verifies_an_instance_of_the_template(tmp_path):
    unit = TEMPLATE.read_text().replace(f"{INSTALLED}/.venv/bin/python", sys.executable)
    path = tmp_path / "findimage@0-3.service"
    path.write_text(unit.replace(f"WorkingDirectory={INSTALLED}", f"WorkingDirectory={ROOT}"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr
