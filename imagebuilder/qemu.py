"""QEMU for the local target: accelerator probe, NoCloud seeds, booting a disk, the boot test.

Everything here drives the real ``qemu-system-x86_64``, ``genisoimage`` and ``ssh``.
A VM is reached over QEMU user networking, with the guest's port 22 forwarded to a free
port on 127.0.0.1, and logged into with a throw-away key handed to cloud-init on a
NoCloud seed (an ISO labelled ``cidata``), the way a cloud hands one over.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from imagebuilder import guestcheck
from imagebuilder.guestcheck import GuestSession
from imagebuilder.procs import Cancelled, stop_group

Accel = Literal["kvm", "tcg"]

QEMU = "qemu-system-x86_64"
ACCEL_ENV = "IMAGEBUILDER_QEMU_ACCEL"  # "kvm" or "tcg": skip the probe
DEFAULT_MEMORY_MB = 2048
DEFAULT_CPUS = 2
SSH_BOOT_TIMEOUT = 900.0  # TCG on 2 busy cores: a Debian boot takes ~25 s idle, minutes when loaded
PROBE_TIMEOUT = 20.0
# UEFI guests (firmware "efi"): Debian's OVMF (package ovmf), its code read-only and shared, a
# fresh copy of its variable store per VM.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
Firmware = Literal["bios", "efi"]

_accel_cache: dict[tuple[str, ...], Accel] = {}


class QemuError(RuntimeError):
    """QEMU or the guest did not do what was asked; the message says what and where to look."""


# --- accelerator -----------------------------------------------------------------------

# A boot sector that writes "OK" to COM1 and leaves through isa-debug-exit (exit status 33).
_PROBE_SECTOR = bytes.fromhex("baf803b04feeb04beebaf400b010eef4ebfd")
_PROBE_EXIT = (0x10 << 1) | 1


def accelerator(kernel: Path | None = None, initrd: Path | None = None) -> Accel:
    """``"kvm"`` when a probe guest runs under KVM, else ``"tcg"``; cached per process.

    ``$IMAGEBUILDER_QEMU_ACCEL`` overrides the probe. The probe boots a boot sector
    (SeaBIOS, real mode, serial out: ~1 s), then ``kernel`` and ``initrd`` (the Debian
    base disk's) into the initramfs' userspace, which gives up on a missing root and
    powers off. A broken KVM passes the first and hangs in the second (costing
    ``PROBE_TIMEOUT``), so without a kernel to try KVM is not trusted: ``"tcg"``.
    """
    forced = os.environ.get(ACCEL_ENV)
    if forced in ("kvm", "tcg"):
        return forced  # type: ignore[return-value]
    cache_key = (str(kernel), str(initrd))
    if cache_key not in _accel_cache:
        _accel_cache[cache_key] = _probe(kernel, initrd)
    return _accel_cache[cache_key]


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _probe(kernel: Path | None, initrd: Path | None) -> Accel:
    if not _kvm_usable():
        return "tcg"
    with tempfile.TemporaryDirectory(prefix="kvm-probe-") as tmp:
        sector = Path(tmp) / "probe.img"
        if not probe_boot_sector(sector, "kvm", timeout=10):
            return "tcg"
        if kernel is None or initrd is None:
            return "tcg"
        if not probe_kernel(kernel, initrd, "kvm", timeout=PROBE_TIMEOUT):
            return "tcg"
    return "kvm"


def probe_boot_sector(path: Path, accel: Accel, timeout: float) -> bool:
    """Write the probe boot sector to ``path`` and boot it: True if it reported and exited."""
    path.write_bytes(_PROBE_SECTOR.ljust(510, b"\0") + b"\x55\xaa")
    out = _run_probe(
        ["-drive", f"file={path},format=raw,if=ide", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        accel, timeout,
    )
    return out is not None and out[0] == _PROBE_EXIT and "OK" in out[1]


def probe_kernel(kernel: Path, initrd: Path, accel: Accel, timeout: float) -> bool:
    """Boot ``kernel`` into its initramfs, which gives up on a missing root: True if it got there."""
    out = _run_probe(
        ["-kernel", str(kernel), "-initrd", str(initrd), "-no-reboot",
         "-append", "console=ttyS0 root=/dev/disk/by-uuid/none rootdelay=1 panic=1"],
        accel, timeout,
    )
    return out is not None and "Gave up waiting for root" in out[1]


def _run_probe(args: list[str], accel: Accel, timeout: float) -> tuple[int, str] | None:
    cmd = [QEMU, *accel_args(accel), "-m", "256", "-nodefaults", "-display", "none", "-serial", "stdio", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
    return proc.returncode, out.decode(errors="replace")


def accel_args(accel: Accel) -> list[str]:
    """The QEMU arguments selecting the accelerator and a CPU model that suits it."""
    return ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]


# --- keys and seeds --------------------------------------------------------------------


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str  # the authorized_keys line


def make_ssh_key(directory: Path, name: str = "id_ed25519") -> SshKey:
    """A fresh ed25519 key pair without a passphrase, in ``directory``."""
    private = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imagebuilder-throwaway", "-f", str(private)],
        check=True, capture_output=True,
    )
    return SshKey(private=private, public=(directory / f"{name}.pub").read_text().strip())


def seed_files(user: str, authorized_keys: Sequence[str], instance_id: str | None = None,
               hostname: str = "imagebuilder", extra_config: str = "") -> dict[str, str]:
    """NoCloud ``user-data`` and ``meta-data``: ``user`` with passwordless sudo and the keys (and
    ``extra_config``, more top-level cloud-config keys)."""
    instance_id = instance_id or f"iid-{uuid.uuid4().hex[:12]}"
    keys = "".join(f"      - {key}\n" for key in authorized_keys)
    user_data = (
        "#cloud-config\n"
        "users:\n"
        f"  - name: {user}\n"
        "    shell: /bin/bash\n"
        "    sudo: ALL=(ALL) NOPASSWD:ALL\n"
        "    lock_passwd: true\n"
        "    ssh_authorized_keys:\n"
        f"{keys}"
        f"{extra_config}"
    )
    meta_data = f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"
    return {"user-data": user_data, "meta-data": meta_data}


def write_seed_dir(directory: Path, user: str, authorized_keys: Sequence[str],
                   instance_id: str | None = None, extra_config: str = "") -> list[Path]:
    """The seed as plain files (for Packer's ``cd_files`` with ``cd_label = "cidata"``)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in seed_files(user, authorized_keys, instance_id, extra_config=extra_config).items():
        (directory / name).write_text(text)
        paths.append(directory / name)
    return paths


def make_seed_iso(dest: Path, user: str, authorized_keys: Sequence[str],
                  instance_id: str | None = None) -> Path:
    """A NoCloud seed ISO (volume label ``cidata``) at ``dest``."""
    with tempfile.TemporaryDirectory(prefix="seed-") as tmp:
        files = write_seed_dir(Path(tmp), user, authorized_keys, instance_id)
        proc = subprocess.run(
            ["genisoimage", "-quiet", "-output", str(dest), "-volid", "cidata", "-joliet", "-rock",
             *map(str, files)],
            capture_output=True, text=True,
        )
    if proc.returncode != 0:
        raise QemuError(f"genisoimage failed: {proc.stderr.strip()}")
    return dest


# --- running a VM ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Vm:
    """A running guest: its QEMU process, forwarded ssh port, key and serial log."""

    process: subprocess.Popen
    port: int
    user: str
    key: Path
    serial_log: Path
    timings: dict[str, float] = field(default_factory=dict)

    def ssh_command_prefix(self) -> list[str]:
        """ssh to the guest, without the remote command."""
        return [
            "ssh", "-i", str(self.key), "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", f"{self.user}@127.0.0.1",
        ]

    def ssh_command(self, command: str) -> list[str]:
        return [*self.ssh_command_prefix(), command]

    def ssh(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the guest; the result, whatever its exit status."""
        return subprocess.run(self.ssh_command(command), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def serial_tail(self, lines: int = 30) -> str:
        try:
            text = self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_ssh(self, timeout: float = SSH_BOOT_TIMEOUT, cancel: threading.Event | None = None) -> float:
        """Seconds until ``ssh true`` succeeds; QemuError if QEMU exits or time runs out."""
        started = time.monotonic()
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled("boot test stopped: the build was cancelled")
            if self.process.poll() is not None:
                raise QemuError(f"QEMU exited ({self.process.returncode}) before ssh came up; "
                                f"serial log {self.serial_log}:\n{self.serial_tail()}")
            try:
                if self.ssh("true", timeout=30).returncode == 0:
                    return time.monotonic() - started
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - started > timeout:
                raise QemuError(f"no ssh login within {timeout:.0f}s; serial log {self.serial_log}:\n"
                                f"{self.serial_tail()}")
            if cancel is not None and cancel.wait(2):
                continue
            time.sleep(0 if cancel is not None else 2)

    def shutdown(self, timeout: float = 120) -> None:
        """Power off from inside; kill QEMU if the guest does not stop in time."""
        if self.process.poll() is None:
            try:
                self.ssh("sudo systemctl poweroff", timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def qemu_command(disk: Path, *, port: int, serial_log: Path, accel: Accel, seed: Path | None = None,
                 disk_format: str = "qcow2", snapshot: bool = True, memory_mb: int = DEFAULT_MEMORY_MB,
                 cpus: int = DEFAULT_CPUS, kernel: Path | None = None, initrd: Path | None = None,
                 append: str | None = None, efi_vars: Path | None = None) -> list[str]:
    """The QEMU command line: virtio disk and NIC, user networking with ssh forwarded, serial to a file.

    ``snapshot`` keeps the disk untouched (writes go to a temporary overlay). Without
    ``kernel`` the firmware boots the disk's own bootloader: SeaBIOS, or with ``efi_vars`` (the
    VM's own copy of OVMF's variable store, see ovmf_vars) OVMF as two flash drives.
    """
    drive = f"file={disk},format={disk_format},if=virtio,cache=unsafe"
    cmd = [
        QEMU, *accel_args(accel), "-machine", "pc", "-m", str(memory_mb), "-smp", str(cpus),
        "-nodefaults", "-display", "none", "-serial", f"file:{serial_log}",
        "-drive", drive,
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
    ]
    if efi_vars is not None:
        cmd += ["-drive", f"if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on",
                "-drive", f"if=pflash,format=raw,unit=1,file={efi_vars}"]
    if snapshot:
        cmd.append("-snapshot")
    if seed is not None:
        cmd += ["-drive", f"file={seed},format=raw,if=ide,media=cdrom,readonly=on"]
    if kernel is not None:
        cmd += ["-kernel", str(kernel)]
        if initrd is not None:
            cmd += ["-initrd", str(initrd)]
        if append:
            cmd += ["-append", append]
    return cmd


PIDFILE = "qemu.pid"  # in the boot's workdir: which process the VM is


def ovmf_vars(workdir: Path) -> Path:
    """A fresh copy of OVMF's variable store for one VM (the firmware writes to it)."""
    for path in (OVMF_CODE, OVMF_VARS):
        if not path.is_file():
            raise QemuError(f"{path} is missing: UEFI guests need OVMF (apt-get install ovmf)")
    target = workdir / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, target)
    return target


@contextmanager
def boot(disk: Path, *, user: str, key: SshKey, workdir: Path, accel: Accel | None = None,
         disk_format: str = "qcow2", snapshot: bool = True, kernel: Path | None = None,
         initrd: Path | None = None, append: str | None = None, firmware: Firmware = "bios",
         ssh_timeout: float = SSH_BOOT_TIMEOUT, cancel: threading.Event | None = None) -> Iterator[Vm]:
    """Boot ``disk`` with a NoCloud seed giving ``user`` the ``key``; yield once ssh works.

    ``firmware`` "efi" boots it under OVMF. The guest is powered off (or killed) on exit. The
    serial log stays in ``workdir``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    efi_vars = ovmf_vars(workdir) if firmware == "efi" else None
    seed = make_seed_iso(workdir / "seed.iso", user, [key.public])
    accel = accel or accelerator()
    serial_log = workdir / "serial.log"
    started = time.monotonic()
    process: subprocess.Popen | None = None
    try:
        for attempt in range(3):  # the free port can be taken between probe and QEMU's bind
            port = free_port()
            cmd = [*qemu_command(disk, port=port, serial_log=serial_log, accel=accel, seed=seed,
                                 disk_format=disk_format, snapshot=snapshot, kernel=kernel, initrd=initrd,
                                 append=append, efi_vars=efi_vars), "-pidfile", str(workdir / PIDFILE)]
            stderr_path = workdir / "qemu.stderr"
            with open(stderr_path, "w") as stderr:
                process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                           start_new_session=True)
            time.sleep(1)
            if process.poll() is None or "hostfwd" not in stderr_path.read_text():
                break
    except BaseException:
        # Interrupted while QEMU starts: it is in its own session, so nothing else stops it.
        if process is not None:
            stop_group(process, grace=5)
        raise
    assert process is not None
    vm = Vm(process=process, port=port, user=user, key=key.private, serial_log=serial_log)
    try:
        if process.poll() is not None:
            raise QemuError(f"QEMU did not start: {stderr_path.read_text().strip()}\n  {shlex.join(cmd)}")
        vm.wait_for_ssh(ssh_timeout, cancel)
        vm.timings["ssh_up"] = time.monotonic() - started
        yield vm
    except BaseException:
        # Interrupted or failed: no graceful poweroff, QEMU goes now.
        stop_group(vm.process, grace=5)
        raise
    finally:
        vm.shutdown()


# --- boot test -------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What a built node image must show when it boots on its own.

    ``build_key`` is compared with the provenance file; ``kubernetes_version`` ("1.31.4")
    with ``kubeadm version -o short`` and, when given, makes ``active`` default to the
    runtime's unit and ``enabled`` to the kubelet's (the node contract's, as validate checks them).
    ``firmware`` "efi": the image boots under OVMF and must find itself booted by UEFI.
    """

    build_key: str | None = None
    kubernetes_version: str | None = None
    active: tuple[str, ...] | None = None
    enabled: tuple[str, ...] | None = None
    firmware: Firmware | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Expected:
        unknown = set(data) - {"build_key", "kubernetes_version", "active", "enabled", "firmware"}
        if unknown:
            raise ValueError(f"boot test: unknown expectation(s) {sorted(unknown)}")
        return cls(
            build_key=data.get("build_key"), kubernetes_version=data.get("kubernetes_version"),
            active=tuple(data["active"]) if "active" in data else None,
            enabled=tuple(data["enabled"]) if "enabled" in data else None,
            firmware=data.get("firmware"),
        )

    @property
    def units_active(self) -> tuple[str, ...]:
        if self.active is not None:
            return self.active
        return _contract_units("imagebuilder_runtime_service") if self.kubernetes_version else ()

    @property
    def units_enabled(self) -> tuple[str, ...]:
        if self.enabled is not None:
            return self.enabled
        return _contract_units("imagebuilder_kubelet_service") if self.kubernetes_version else ()


def _contract_units(name: str) -> tuple[str, ...]:
    """The unit the node contract names ``name`` (the runtime's, the kubelet's)."""
    return (str(guestcheck.node_contract(name)[name]),)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class BootTestResult:
    image: Path
    checks: list[Check]
    seconds: dict[str, float]
    serial_log: Path

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def summary(self) -> str:
        failed = [c for c in self.checks if not c.ok]
        if not failed:
            return f"boot test passed: {self.image} ({len(self.checks)} checks)"
        return f"boot test failed: {self.image}: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)

    def raise_for_failure(self) -> None:
        if not self.ok:
            raise QemuError(self.summary())


# Checks run in the booted guest over the boot test's one SSH connection.
ValidateHook = Callable[[GuestSession], list[Check]]


def role_check(extra_vars: dict | None = None) -> ValidateHook:
    """A boot-test hook with the validate role's checks (imagebuilder/guestcheck.py), each by name."""

    def hook(session: GuestSession) -> list[Check]:
        try:
            return [Check(c.name, c.ok, c.detail) for c in guestcheck.role_checks(session, dict(extra_vars or {}))]
        except (ValueError, guestcheck.AgentError) as exc:
            return [Check("validate role", False, str(exc)[:400])]

    return hook


def release_fields(text: str) -> dict[str, str]:
    """KEY=value lines of the provenance file (values may be quoted)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            fields[name.strip()] = value.strip().strip('"').strip("'")
    return fields


def guest_checks(session: GuestSession, expected: Expected) -> list[Check]:
    """The checks a booted node image must pass, over the boot test's one connection."""
    contract = guestcheck.node_contract("imagebuilder_path", "imagebuilder_release_file")
    checks: list[Check] = []
    if expected.firmware is not None:
        booted = guestcheck.booted_firmware(session)
        checks.append(Check(f"booted by {expected.firmware} firmware", booted == expected.firmware,
                            f"{guestcheck.EFI_FIRMWARE_DIR} {'exists' if booted == 'efi' else 'is missing'}: "
                            f"{booted} (want {expected.firmware})"))
    cloud = session.command(["cloud-init", "status", "--wait", "--long"], timeout=600)
    checks.append(Check("cloud-init", cloud["rc"] == 0 and "status: done" in cloud["stdout"],
                        (cloud["stdout"] + cloud["stderr"]).strip().lstrip(".").strip().replace("\n", " ")[:300]))
    for unit in expected.units_active:
        res = session.command(["systemctl", "is-active", unit])
        state = res["stdout"].strip()
        checks.append(Check(f"{unit} active", state == "active", state or res["stderr"].strip()))
    for unit in expected.units_enabled:
        res = session.command(["systemctl", "is-enabled", unit])
        state = res["stdout"].strip()
        checks.append(Check(f"{unit} enabled", state == "enabled", state or res["stderr"].strip()))
    if expected.kubernetes_version:
        res = session.command(["kubeadm", "version", "-o", "short"], env={"PATH": contract["imagebuilder_path"]})
        want = "v" + expected.kubernetes_version.lstrip("v")
        got = res["stdout"].strip()
        checks.append(Check("kubeadm version", got == want, f"{got or res['stderr'].strip()} (want {want})"))
    if expected.build_key:
        release_file = contract["imagebuilder_release_file"]
        res = session.command(["cat", release_file])
        values = release_fields(res["stdout"]).values()
        ok = res["rc"] == 0 and expected.build_key in values
        detail = "matches" if ok else (res["stderr"].strip() or f"build key {expected.build_key} not in {release_file}")
        checks.append(Check("provenance", ok, detail))
    return checks


def boot_test(image: Path, expected: dict | Expected, *, user: str = "debian", workdir: Path | None = None,
              accel: Accel | None = None, validate: ValidateHook | Sequence[ValidateHook] | None = None,
              ssh_timeout: float = SSH_BOOT_TIMEOUT, cancel: threading.Event | None = None,
              disk_format: str = "qcow2") -> BootTestResult:
    """Boot ``image`` (qcow2, or ``disk_format``) on its own firmware and bootloader, no ``-kernel``, and check it.
    The firmware is SeaBIOS, or OVMF when ``expected`` says ``firmware: efi``.

    Login is a throw-away key given to ``user`` by a NoCloud seed; the image file is not
    modified (``-snapshot``). Every check runs over one SSH connection to a small agent
    in the guest; ``validate`` adds hooks run over it (the validate role's checks). A guest
    that never reaches ssh yields a failed "ssh login" check. ``cancel`` stops the VM.
    """
    hooks = [validate] if callable(validate) else list(validate or [])
    expected = expected if isinstance(expected, Expected) else Expected.from_dict(expected)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="boot-test-"))
    workdir.mkdir(parents=True, exist_ok=True)
    keydir = Path(tempfile.mkdtemp(prefix="boot-test-key-"))
    started = time.monotonic()
    seconds: dict[str, float] = {}
    checks: list[Check] = []
    try:
        key = make_ssh_key(keydir)
        try:
            with boot(image, user=user, key=key, workdir=workdir, accel=accel, ssh_timeout=ssh_timeout,
                      cancel=cancel, disk_format=disk_format, firmware=expected.firmware or "bios") as vm:
                seconds["ssh_up"] = round(vm.timings["ssh_up"], 1)
                checks.append(Check("ssh login", True, f"{user} via NoCloud seed key"))
                t = time.monotonic()
                try:
                    with GuestSession(vm.ssh_command_prefix()) as session:
                        checks += guest_checks(session, expected)
                        for hook in hooks:
                            checks += hook(session)
                except guestcheck.AgentError as exc:
                    checks.append(Check("guest agent", False, str(exc)[:400]))
                seconds["checks"] = round(time.monotonic() - t, 1)
        except QemuError as exc:
            checks.append(Check("ssh login", False, str(exc).splitlines()[0]))
    finally:
        shutil.rmtree(keydir, ignore_errors=True)
    seconds["total"] = round(time.monotonic() - started, 1)
    return BootTestResult(image=image, checks=checks, seconds=seconds, serial_log=workdir / "serial.log")
