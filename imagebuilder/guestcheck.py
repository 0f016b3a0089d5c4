"""The validate role's checks against a booted guest in one SSH connection.

The role (ansible/roles/validate) stays the one source of what is checked: its tasks gather
facts read-only (command, find, stat), then its checks template turns them into a list of
{name, ok, detail}. Run task by task over SSH that costs a Python start-up in the guest per
task, minutes under TCG. Here the role's tasks are read as data and walked on the host:
each task's arguments are templated with Ansible's own templar (the role defaults, the
cell's variables, what earlier tasks registered), and only the gathering itself happens in
the guest, by one small agent behind one ``ssh ... sudo python3`` that answers requests on
stdin. The checks template renders on the host, through the same templar.

Modules other than command, find, stat, set_fact, include_vars and assert are refused by name, so a
change to the role that this cannot follow fails the boot test instead of skipping a check.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuilder.config import ANSIBLE_DIR

ROLE = "validate"
CONTRACT_ROLE = "imagebuilder"  # its defaults hold the node contract, which ROLE checks
RESULTS_VAR = "validate_results"  # what the role's "Evaluate the checks" task sets
AGENT_TIMEOUT = 300.0

# The guest side: one request per line on stdin, one JSON answer per line on stdout.
AGENT = r'''
import base64, fnmatch, json, os, subprocess, sys
def command(r):
    env = dict(os.environ, **r.get("env", {}))
    data = base64.b64decode(r["stdin"]) if r.get("stdin") else None
    try:
        p = subprocess.run(r["argv"], input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           timeout=r.get("timeout", 120))
        out, err, rc = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"), p.returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        out, err, rc = "", str(e), 2
    out, err = out.rstrip("\n"), err.rstrip("\n")
    return {"rc": rc, "stdout": out, "stderr": err, "stdout_lines": out.splitlines(),
            "stderr_lines": err.splitlines(), "cmd": r["argv"], "changed": False}
def stat(r):
    try:
        s = os.lstat(r["path"])
    except OSError:
        return {"stat": {"exists": False}}
    import stat as st
    return {"stat": {"exists": True, "size": s.st_size, "mode": "%04o" % st.S_IMODE(s.st_mode),
                     "isdir": st.S_ISDIR(s.st_mode), "isreg": st.S_ISREG(s.st_mode), "islnk": st.S_ISLNK(s.st_mode),
                     "uid": s.st_uid, "gid": s.st_gid, "path": r["path"]}}
def find(r):
    import stat as st
    files = []
    want = r.get("file_type", "file")
    for top in r["paths"]:
        for root, dirs, names in os.walk(top):
            depth = root[len(top):].count("/")
            for name in sorted(names + dirs):
                path = os.path.join(root, name)
                if not r.get("hidden") and name.startswith("."):
                    continue
                if r.get("patterns") and not any(fnmatch.fnmatch(name, p) for p in r["patterns"]):
                    continue
                if any(fnmatch.fnmatch(name, p) for p in r.get("excludes") or []):
                    continue
                try:
                    s = os.lstat(path)
                except OSError:
                    continue
                kind = "directory" if st.S_ISDIR(s.st_mode) else "link" if st.S_ISLNK(s.st_mode) else "file" if st.S_ISREG(s.st_mode) else "other"
                if want != "any" and kind != want:
                    continue
                files.append({"path": path, "size": s.st_size, "isdir": kind == "directory", "islnk": kind == "link"})
            if not r.get("recurse") or (r.get("depth") and depth + 1 >= r["depth"]):
                break
    return {"files": files, "matched": len(files), "examined": len(files), "changed": False}
def put(r):
    with open(r["path"], "wb") as f:
        f.write(base64.b64decode(r["data"]))
    return {"size": os.path.getsize(r["path"])}
def facts(r):
    info = {}
    with open("/etc/os-release") as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                info[k] = v.strip('"')
    ids = [info.get("ID", "")] + info.get("ID_LIKE", "").split()
    family = "Debian" if "debian" in ids else "RedHat" if set(ids) & {"rhel", "fedora", "centos"} else info.get("ID", "")
    return {"os_family": family, "distribution": info.get("ID", ""), "distribution_version": info.get("VERSION_ID", "")}
OPS = {"command": command, "stat": stat, "find": find, "put": put, "facts": facts}
for line in sys.stdin:
    req = json.loads(line)
    try:
        ans = OPS[req["op"]](req)
    except Exception as e:
        ans = {"failed": True, "msg": "%s: %s" % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(ans) + "\n")
    sys.stdout.flush()
'''


# Linux makes this directory when UEFI firmware booted it (and handed it its runtime services).
EFI_FIRMWARE_DIR = "/sys/firmware/efi"


class AgentError(RuntimeError):
    """The guest agent did not answer (ssh dropped, python missing)."""


class GuestSession:
    """One SSH connection to the guest with the agent at the other end (as root, via sudo)."""

    def __init__(self, ssh_command: Sequence[str], become: str = "sudo") -> None:
        remote = f"{become} python3 -u -c {shlex.quote(AGENT)}".strip()
        self.process = subprocess.Popen([*ssh_command, remote], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise AgentError(self._why()) from None
        line = self.process.stdout.readline()
        if not line:
            raise AgentError(self._why())
        return json.loads(line)

    def command(self, argv: Sequence[str], env: dict[str, str] | None = None, stdin: bytes | None = None,
                timeout: float = 120) -> dict[str, Any]:
        fields: dict[str, Any] = {"argv": list(argv), "env": env or {}, "timeout": timeout}
        if stdin is not None:
            fields["stdin"] = base64.b64encode(stdin).decode()
        return self.request("command", **fields)

    def put(self, path: str, data: bytes) -> dict[str, Any]:
        return self.request("put", path=path, data=base64.b64encode(data).decode())

    def _why(self) -> str:
        self.close()
        err = self.process.stderr.read() if self.process.stderr else ""
        return f"the guest agent stopped (exit {self.process.returncode}): {err.strip()[-300:]}"

    def close(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> GuestSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the role, walked on the host --------------------------------------------------------


_ansible_ready = False


def _init_ansible() -> None:
    """Ansible's plugin loader (lookups, filters by their ansible.builtin names), once per process."""
    global _ansible_ready
    if not _ansible_ready:
        from ansible.plugins.loader import init_plugin_loader

        init_plugin_loader()
        _ansible_ready = True


def node_contract(*names: str) -> dict[str, Any]:
    """Values of the node contract (the shared role's defaults), templated as Ansible would."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    _init_ansible()
    loader = DataLoader()
    defaults = loader.load_from_file(str(ANSIBLE_DIR / "roles" / CONTRACT_ROLE / "defaults/main.yml"),
                                     trusted_as_template=True) or {}
    templar = Templar(loader=loader, variables=defaults)
    return {name: templar.template(defaults[name]) for name in names}


@dataclass(frozen=True)
class RoleCheck:
    name: str
    ok: bool
    detail: str


def _module(task: dict[str, Any]) -> tuple[str, Any]:
    for key, value in task.items():
        if key.startswith("ansible.builtin.") or key in ("command", "find", "stat", "set_fact", "assert", "include_vars"):
            return key.removeprefix("ansible.builtin."), value
    raise ValueError(f"task {task.get('name')!r}: no module this boot test knows")


class RoleRunner:
    """The validate role's tasks against a GuestSession, with Ansible's templar on the host."""

    def __init__(self, variables: dict[str, Any], role_dir: Path | None = None) -> None:
        from ansible.parsing.dataloader import DataLoader

        _init_ansible()
        self.role_dir = role_dir or ANSIBLE_DIR / "roles" / ROLE
        self.loader = DataLoader()
        defaults = self.defaults(self.role_dir)
        self.tasks = self.loader.load_from_file(str(self.role_dir / "tasks/main.yml"), trusted_as_template=True) or []
        self.cell_vars = dict(variables)  # extra vars: nothing the role loads overrides them
        self.vars: dict[str, Any] = {**defaults, **variables, "role_path": str(self.role_dir),
                                     "ansible_search_path": [str(self.role_dir)]}

    def defaults(self, role_dir: Path) -> dict[str, Any]:
        """The role's defaults over those of the roles it depends on (meta/main.yml), as Ansible merges them."""
        merged: dict[str, Any] = {}
        meta = role_dir / "meta/main.yml"
        for dependency in (self.loader.load_from_file(str(meta)) or {}).get("dependencies") or [] if meta.exists() else []:
            name = dependency if isinstance(dependency, str) else dependency.get("role") or dependency.get("name")
            merged.update(self.defaults(role_dir.parent / str(name)))
        path = role_dir / "defaults/main.yml"
        if path.exists():
            merged.update(self.loader.load_from_file(str(path), trusted_as_template=True) or {})
        return merged

    def template(self, value: Any) -> Any:
        from ansible.template import Templar

        return Templar(loader=self.loader, variables=self.vars).template(value)

    def condition(self, expression: Any) -> bool:
        from ansible.template import Templar, trust_as_template

        if isinstance(expression, bool):
            return expression
        expressions = expression if isinstance(expression, list) else [expression]
        templar = Templar(loader=self.loader, variables=self.vars)
        return all(bool(templar.template(trust_as_template("{{ (" + str(e) + ") | bool }}"))) for e in expressions)

    def run(self, session: GuestSession) -> list[RoleCheck]:
        self.vars["ansible_facts"] = session.request("facts")
        for task in self.tasks:
            result = self._task(session, task)
            if "register" in task and result is not None:
                self.vars[task["register"]] = result
        checks = self.vars.get(RESULTS_VAR)
        if not isinstance(checks, list):
            raise ValueError(f"the {ROLE} role set no {RESULTS_VAR} list")
        return [RoleCheck(str(c["name"]), bool(c["ok"]), str(c.get("detail", ""))) for c in checks]

    def _task(self, session: GuestSession, task: dict[str, Any]) -> dict[str, Any] | None:
        """One task as Ansible runs it: with a loop, ``when`` is asked per item and results gather per item."""
        if "loop" not in task:
            if "when" in task and not self.condition(task["when"]):
                return {"skipped": True, "changed": False}
            return self._execute(session, task)
        loop_var = (task.get("loop_control") or {}).get("loop_var", "item")
        results = []
        for item in self.template(task["loop"]) or []:
            self.vars[loop_var] = item
            if "when" in task and not self.condition(task["when"]):
                results.append({"skipped": True, "changed": False, loop_var: item})
                continue
            results.append({**(self._execute(session, task) or {}), loop_var: item})
        self.vars.pop(loop_var, None)
        return {"results": results, "changed": False}

    def _execute(self, session: GuestSession, task: dict[str, Any]) -> dict[str, Any] | None:
        name = task.get("name", "?")
        module, args = _module(task)
        if module == "assert":
            return None  # the checks are reported one by one from RESULTS_VAR
        if module == "set_fact":
            for key, value in args.items():
                self.vars[key] = self.template(value)
            return None
        if module == "include_vars":
            return self._include_vars(args)
        return self._gather(session, module, args, task, name)

    def _include_vars(self, args: Any) -> dict[str, Any]:
        """Ansible's include_vars on the host: the file's variables over the role defaults, under the cell's."""
        args = self.template(args)
        path = args["file"] if isinstance(args, dict) else args
        loaded = self.loader.load_from_file(str(path), trusted_as_template=True) or {}
        self.vars.update({k: v for k, v in loaded.items() if k not in self.cell_vars})
        return {"ansible_facts": loaded, "changed": False}

    def _gather(self, session: GuestSession, module: str, args: Any, task: dict[str, Any], name: str) -> dict[str, Any]:
        args = self.template(args)
        if module == "command":
            argv = args["argv"] if isinstance(args, dict) else shlex.split(args)
            env = {k: str(v) for k, v in (self.template(task.get("environment")) or {}).items()}
            result = session.command([str(a) for a in argv], env=env)
            failed = self._failed(task, result, result["rc"] != 0)
        elif module == "find":
            listify = lambda v: [v] if isinstance(v, str) else list(v or [])  # noqa: E731
            result = session.request("find", paths=listify(args["paths"]), patterns=listify(args.get("patterns")),
                                     excludes=listify(args.get("excludes")), file_type=args.get("file_type", "file"),
                                     recurse=bool(args.get("recurse")), hidden=bool(args.get("hidden")),
                                     depth=args.get("depth"))
            failed = bool(result.get("failed"))
        elif module == "stat":
            result = session.request("stat", path=args["path"])
            failed = bool(result.get("failed"))
        else:
            raise ValueError(f"task {name!r}: module {module} is not one the one-round-trip boot test can run")
        if failed:
            raise ValueError(f"task {name!r} failed: {result.get('stderr') or result.get('msg') or result}")
        return result

    def _failed(self, task: dict[str, Any], result: dict[str, Any], default: bool) -> bool:
        if "failed_when" not in task:
            return default
        register = task.get("register")
        if register:
            self.vars[register] = result
        return self.condition(task["failed_when"])


def role_checks(session: GuestSession, variables: dict[str, Any]) -> list[RoleCheck]:
    """The validate role's checks of the guest behind ``session``, one per check the role makes."""
    return RoleRunner(variables).run(session)


def booted_firmware(session: GuestSession) -> str:
    """"efi" when the guest was booted by UEFI firmware, else "bios"."""
    found = session.request("stat", path=EFI_FIRMWARE_DIR)
    return "efi" if found.get("stat", {}).get("isdir") else "bios"
