"""Makes and removes the testbed: network namespaces on a bridge, tc shaping, CPU-quota cgroups; and the probe
that says what this machine allows. Needs root, `ip`, `tc` and `unshare`. No torch.

Everything `up` creates is appended to the state file *before* the next step runs, so `down` removes exactly what
was made, also after a failure halfway, and running `down` twice is harmless.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from autoconf.errors import UserError
from autoconf.files import write_file
from autoconf.testbed.commands import IFACE, Names, hosts_file, tc_commands
from autoconf.testbed.spec import TestbedSpec, parse_spec

DEFAULT_STATE_DIR = Path(os.environ.get("AUTOCONF_TESTBED_DIR", "/tmp/autoconf-testbed"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
# A short CFS period spreads a rank's quota evenly: with the default 100 ms a rank at 0.4 cores could run at full
# speed for 40 ms at a time, so one that waits on its peers between short passes computed faster than its quota.
PERIOD_US = 10_000
ETC_NETNS = Path("/etc/netns")


def sh(argv: list[str], check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess:
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise UserError(f"`{' '.join(argv)}` failed: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc


# ---------------------------------------------------------------- cgroups (v2 unified, or the v1 cpu controller)

@dataclass(frozen=True)
class Cgroups:
    root: Path
    version: int

    @staticmethod
    def detect() -> "Cgroups | None":
        v2 = CGROUP_ROOT / "cgroup.controllers"
        if v2.exists() and "cpu" in v2.read_text().split():
            return Cgroups(CGROUP_ROOT, 2)
        for name in ("cpu", "cpu,cpuacct"):
            if (CGROUP_ROOT / name / "cpu.cfs_quota_us").exists():
                return Cgroups(CGROUP_ROOT / name, 1)
        return None

    def create(self, rel: str, quota_cpus: float | None) -> Path:
        path = self.root / rel
        if self.version == 2:
            parent = path.parent
            with open(parent / "cgroup.subtree_control", "w") as f:  # let the new group use the cpu controller
                f.write("+cpu")
        path.mkdir(exist_ok=False)
        if quota_cpus is not None:
            quota = max(int(quota_cpus * PERIOD_US), 1000)
            if self.version == 2:
                (path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
        return path

    def procs(self, rel: str) -> str:
        return str(self.root / rel / "cgroup.procs")

    def pids(self, rel: str) -> list[int]:
        """Processes in the group and all groups below it."""
        out = []
        base = self.root / rel
        if not base.exists():
            return out
        for dirpath, _dirs, _files in os.walk(base):
            try:
                out += [int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()]
            except OSError:
                pass
        return out

    def remove(self, rel: str) -> None:
        path = self.root / rel
        if not path.exists():
            return
        for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            sub.rmdir()
        path.rmdir()


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- what this machine allows

def probe() -> dict:
    """{"ok": bool, "reason": str, "netem": bool, "cgroups": "v1"|"v2"|None, ...}; creates and removes a scratch
    namespace, bridge, veth pair and cgroup. "ok" means namespaces + bridge + veth + HTB work (enough for `up`)."""
    result = {"ok": False, "reason": "", "netem": False, "cgroups": None, "cgroup_reason": ""}
    if os.geteuid() != 0:
        result["reason"] = "needs root (network namespaces, tc, cgroups)"
        return result
    missing = [t for t in ("ip", "tc", "unshare") if shutil.which(t) is None]
    if missing:
        result["reason"] = f"missing {', '.join(missing)} (apt-get install iproute2 util-linux)"
        return result
    tag = f"acp{os.getpid() % 100000}"
    ns, br, veth = f"{tag}-ns", f"{tag}-br", f"{tag}-v"
    try:
        for argv, netns in ((["ip", "netns", "add", ns], None),
                            (["ip", "link", "add", br, "type", "bridge"], None),
                            (["ip", "link", "add", veth, "type", "veth", "peer", "name", IFACE, "netns", ns], None),
                            (["ip", "link", "set", veth, "master", br], None),
                            (["ip", "link", "set", IFACE, "up"], ns),
                            (["tc", "qdisc", "add", "dev", IFACE, "root", "handle", "1:", "htb"], ns),
                            (["tc", "class", "add", "dev", IFACE, "parent", "1:", "classid", "1:10", "htb", "rate",
                              "100mbit"], ns),
                            (["tc", "filter", "add", "dev", IFACE, "parent", "1:", "protocol", "ip", "prio", "1",
                              "u32", "match", "ip", "dst", "10.0.0.1/32", "flowid", "1:10"], ns),
                            (["unshare", "--uts", "hostname", "probe"], ns)):
            proc = sh(argv, check=False, netns=netns)
            if proc.returncode != 0:
                result["reason"] = f"`{' '.join(argv)}` failed: {(proc.stderr or proc.stdout).strip()}"
                return result
        netem = sh(["tc", "qdisc", "add", "dev", IFACE, "parent", "1:10", "handle", "10:", "netem", "delay", "1ms"],
                   check=False, netns=ns)
        result["netem"] = netem.returncode == 0
        result["ok"] = True
    finally:
        sh(["ip", "link", "del", veth], check=False)
        sh(["ip", "link", "del", br], check=False)
        sh(["ip", "netns", "del", ns], check=False)
    cg = Cgroups.detect()
    if cg is None:
        result["cgroup_reason"] = "no cgroup cpu controller (v2 cpu or v1 cpu) under /sys/fs/cgroup"
    else:
        try:
            cg.create(f"{tag}-cg", 0.5)
            cg.remove(f"{tag}-cg")
            result["cgroups"] = f"v{cg.version}"
        except OSError as err:
            result["cgroup_reason"] = f"cannot create a cpu cgroup under {cg.root}: {err.strerror or err}"
    return result


# ---------------------------------------------------------------- state

def state_path(state_dir: Path | str | None = None) -> Path:
    return Path(state_dir or DEFAULT_STATE_DIR) / "state.json"


def load_state(state_dir=None) -> dict | None:
    path = state_path(state_dir)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _save(state: dict, state_dir) -> None:
    path = state_path(state_dir)
    write_file(path, json.dumps(state, indent=2) + "\n", force=True)


# ---------------------------------------------------------------- up / down

def up(spec: TestbedSpec, state_dir=None, name: str = "actb", log=print) -> dict:
    """Creates the testbed; on any failure removes what it made and raises UserError."""
    names = Names(name)
    path = state_path(state_dir)
    if path.exists():
        raise UserError(f"a testbed is already up (state {path}); run `python scripts/testbed.py down` first")
    if os.geteuid() != 0:
        raise UserError("the testbed needs root (network namespaces, tc, cgroups); run it with sudo")
    missing = [t for t in ("ip", "tc", "unshare") if shutil.which(t) is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)}; install them (apt-get install -y iproute2 util-linux)")
    existing = set(sh(["ip", "netns", "list"]).stdout.split())
    clash = [names.netns(i) for i in range(spec.nodes) if names.netns(i) in existing]
    clash += [n for n in [names.bridge, *(names.host_veth(i) for i in range(spec.nodes))]
              if sh(["ip", "link", "show", n], check=False).returncode == 0]
    if clash:
        raise UserError(f"{', '.join(clash)} already exist(s) but no testbed state is at {path}; remove them by hand "
                        "(ip netns del / ip link del) or pick another --name")
    cg = Cgroups.detect()  # also without a quota: node cgroups let exec and down find every process
    if spec.cpu_quota_per_rank is not None and cg is None:
        raise UserError("cpu_quota_per_rank needs a cgroup cpu controller, and none is mounted under /sys/fs/cgroup; "
                        "drop cpu_quota_per_rank from the spec")
    ncpu = os.cpu_count() or 1
    if spec.cpu_quota_per_rank is not None and spec.cpu_quota_per_rank * spec.nodes * spec.ranks_per_node > ncpu:
        log(f"warning: {spec.nodes}x{spec.ranks_per_node} ranks x {spec.cpu_quota_per_rank:g} CPU exceed this "
            f"machine's {ncpu} CPUs; ranks will run slower than their quota when all are busy")

    path.parent.mkdir(parents=True, exist_ok=True)
    ips = spec.ips()
    state = {"version": 1, "name": name, "spec": spec.to_dict(), "ips": ips, "iface": IFACE,
             "netns": [names.netns(i) for i in range(spec.nodes)],
             "hostnames": [names.hostname(i) for i in range(spec.nodes)], "netem": False, "delays_applied": False,
             "cgroups": None, "created": [], "ready": False}
    _save(state, state_dir)

    def made(kind: str, value: str) -> None:
        state["created"].append({"kind": kind, "name": value})
        _save(state, state_dir)

    try:
        sh(["ip", "link", "add", names.bridge, "type", "bridge"])
        made("link", names.bridge)
        sh(["ip", "link", "set", names.bridge, "up"])
        for i in range(spec.nodes):
            ns = names.netns(i)
            sh(["ip", "netns", "add", ns])
            made("netns", ns)
            sh(["ip", "link", "set", "lo", "up"], netns=ns)
            etc = ETC_NETNS / ns  # `ip netns exec` bind-mounts these over /etc: node names resolve, no DNS
            if not etc.exists():
                etc.mkdir(parents=True)
                made("etc", str(etc))
            (etc / "hosts").write_text(hosts_file(names, ips))
            (etc / "resolv.conf").write_text("# autoconf testbed: no DNS inside the namespaces\n")
            sh(["ip", "link", "add", names.host_veth(i), "type", "veth", "peer", "name", IFACE, "netns", ns])
            made("link", names.host_veth(i))
            sh(["ip", "link", "set", names.host_veth(i), "master", names.bridge])
            sh(["ip", "link", "set", names.host_veth(i), "up"])
            sh(["ip", "addr", "add", f"{ips[i]}/{spec.prefixlen}", "dev", IFACE], netns=ns)
            sh(["ip", "link", "set", IFACE, "up"], netns=ns)
        ns0 = names.netns(0)
        netem = sh(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False, netns=ns0)
        state["netem"] = netem.returncode == 0
        if state["netem"]:
            sh(["tc", "qdisc", "del", "dev", "lo", "root"], netns=ns0)
        wants_delay = any(spec.link(a, b) and spec.link(a, b).delay_ms > 0
                          for a in range(spec.nodes) for b in range(a + 1, spec.nodes))
        state["delays_applied"] = state["netem"] or not wants_delay
        if wants_delay and not state["netem"]:
            log("warning: this kernel has no netem qdisc (sch_netem); link DELAYS ARE NOT APPLIED, rates are")
        for i in range(spec.nodes):
            for argv in tc_commands(spec, i, netem=state["netem"]):
                sh(argv, netns=names.netns(i))
        if cg is not None and spec.cpu_quota_per_rank is None:
            try:
                cg.create(names.cgroup, None)
                made("cgroup", names.cgroup)
            except OSError as err:
                log(f"warning: no cgroups ({err.strerror or err}); processes are tracked by namespace only")
                cg = None
        elif cg is not None:
            cg.create(names.cgroup, None)
            made("cgroup", names.cgroup)
        if cg is not None:
            top = names.cgroup
            groups = {"root": str(cg.root), "version": cg.version, "nodes": [], "ranks": []}
            for i in range(spec.nodes):
                quota = spec.cpu_quota_per_rank
                node_rel = f"{top}/node{i}"
                cg.create(node_rel, None if quota is None else quota * spec.ranks_per_node)
                groups["nodes"].append(node_rel)
                ranks = []
                if quota is not None:
                    for r in range(spec.ranks_per_node):
                        cg.create(f"{node_rel}/rank{r}", quota)
                        ranks.append(f"{node_rel}/rank{r}")
                groups["ranks"].append(ranks)
            state["cgroups"] = groups
        state["ready"] = True
        _save(state, state_dir)
    except BaseException as err:
        down(state_dir, log=lambda *_: None)
        if isinstance(err, UserError):
            raise UserError(f"testbed up failed, removed what it made: {err}") from None
        if isinstance(err, OSError):
            raise UserError(f"testbed up failed, removed what it made: {err}") from None
        raise
    return state


def down(state_dir=None, log=print) -> bool:
    """Kills the testbed's processes and removes what `up` recorded; False when there was nothing to remove."""
    path = state_path(state_dir)
    if not path.exists():
        log(f"no testbed is up (no {path})")
        return False
    state = json.loads(path.read_text())
    groups = state.get("cgroups")
    cg = Cgroups(Path(groups["root"]), groups["version"]) if groups else Cgroups.detect()
    for _ in range(3):  # processes may fork while we kill; each round takes what is left
        pids = []
        for item in state.get("created", []):
            if item["kind"] == "netns":
                proc = sh(["ip", "netns", "pids", item["name"]], check=False)
                pids += [int(p) for p in proc.stdout.split()]
            elif item["kind"] == "cgroup" and cg is not None:
                pids += cg.pids(item["name"])
        pids = sorted(set(pids) - {os.getpid()})
        if not pids:
            break
        kill_pids(pids)
        time.sleep(0.2)
    problems = []
    for item in reversed(state.get("created", [])):
        kind, value = item["kind"], item["name"]
        try:
            if kind == "cgroup":
                if cg is not None:
                    cg.remove(value)
            elif kind == "etc":
                if Path(value).parent == ETC_NETNS:
                    shutil.rmtree(value, ignore_errors=True)
            elif kind == "netns":
                proc = sh(["ip", "netns", "del", value], check=False)
                if proc.returncode != 0 and value in sh(["ip", "netns", "list"], check=False).stdout.split():
                    problems.append(f"netns {value}: {proc.stderr.strip()}")
            elif kind == "link":
                proc = sh(["ip", "link", "del", value], check=False)
                if proc.returncode != 0 and sh(["ip", "link", "show", value], check=False).returncode == 0:
                    problems.append(f"link {value}: {proc.stderr.strip()}")
        except OSError as err:
            problems.append(f"{kind} {value}: {err.strerror or err}")
    if problems:
        raise UserError(f"testbed down could not remove {'; '.join(problems)} (state kept at {path}; retry down)")
    path.unlink()
    log(f"testbed {state.get('name', '')} is down; removed {len(state.get('created', []))} object(s)")
    return True


def require_state(state_dir=None) -> dict:
    state = load_state(state_dir)
    if state is None:
        raise UserError(f"no testbed is up (no {state_path(state_dir)}); run `python scripts/testbed.py up --spec FILE`")
    if not state.get("ready"):
        raise UserError(f"the testbed at {state_path(state_dir)} is half made (up failed?); run "
                        "`python scripts/testbed.py down`")
    return state


def state_spec(state: dict) -> TestbedSpec:
    return parse_spec(state["spec"])


def status_text(state: dict) -> str:
    spec = state_spec(state)
    lines = [f"testbed {state['name']}: {spec.nodes} nodes x {spec.ranks_per_node} rank(s), subnet {spec.subnet}, "
             f"interface {state['iface']} in each namespace"]
    quota = spec.cpu_quota_per_rank
    cg = state.get("cgroups")
    for i in range(spec.nodes):
        cpu = "no cpu quota" if quota is None else f"{quota:g} CPU/rank (cgroup v{cg['version']} {cg['nodes'][i]})"
        lines.append(f"  node{i}: netns {state['netns'][i]}  ip {state['ips'][i]}  hostname {state['hostnames'][i]}  "
                     f"{cpu}")
    note = "" if state.get("delays_applied", True) else "   (delays NOT applied: no netem in this kernel)"
    lines.append("link matrix (rate, one-way delay; '-' = unshaped):" + note)
    width = 22
    lines.append(" " * 8 + "".join(f"node{j}".ljust(width) for j in range(spec.nodes)))
    for i in range(spec.nodes):
        cells = []
        for j in range(spec.nodes):
            link = None if i == j else spec.link(i, j)
            cells.append(("" if i == j else "-" if link is None else link.describe()).ljust(width))
        lines.append(f"  node{i} " + "".join(cells))
    return "\n".join(lines)
