"""Testbed (scripts/testbed.py): spec validation, generated tc lines, placeholders; namespace runs where allowed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoconf.errors import UserError
from autoconf.testbed import Names, node_argv, parse_spec, substitute, tc_commands
from autoconf.testbed.commands import hosts_file, node_env, node_values

ROOT = Path(__file__).resolve().parent.parent
SPEC = {"nodes": 3, "ranks_per_node": 2, "subnet": "10.77.0.0/24",
        "default_link": {"rate_mbit": 1000, "delay_ms": 0.1},
        "links": [{"a": 0, "b": 1, "rate_mbit": 100, "delay_ms": 1}, {"a": 2, "b": 1, "rate_mbit": 400}],
        "cpu_quota_per_rank": 0.5}


# ---------------------------------------------------------------- spec


def test_spec_parses_links_symmetrically_and_falls_back_to_default():
    """A link applies in both directions; unnamed pairs get default_link; node i gets the subnet's (i+1)-th host."""
    spec = parse_spec(SPEC)
    assert spec.link(1, 0) == spec.link(0, 1)
    assert spec.link(1, 0).rate_mbit == 100 and spec.link(0, 1).delay_ms == 1
    assert spec.link(1, 2).rate_mbit == 400 and spec.link(1, 2).delay_ms == 0
    assert spec.link(0, 2) == spec.default_link
    assert spec.ips() == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    assert parse_spec(spec.to_dict()) == spec  # the state file round-trips


def test_spec_without_default_link_leaves_pairs_unshaped():
    spec = parse_spec({"nodes": 2})
    assert spec.link(0, 1) is None and spec.ranks_per_node == 1 and spec.cpu_quota_per_rank is None


@pytest.mark.parametrize("patch, words", [
    ({"nodes": 0}, "nodes must be >= 1"),
    ({"nodes": 2.5}, "nodes must be an integer"),
    ({"ranks_per_node": 0}, "ranks_per_node must be >= 1"),
    ({"subnet": "8.8.8.0/24"}, "must be a private range"),
    ({"subnet": "127.0.0.0/8"}, "must be a private range"),
    ({"subnet": "10.77.0.1/24"}, "not an IPv4 network"),
    ({"subnet": "10.77.0.0/31"}, "use a larger one"),
    ({"subnet": "fd00::/64"}, "must be IPv4"),
    ({"links": [{"a": 0, "b": 0, "rate_mbit": 1}]}, "to itself"),
    ({"links": [{"a": 0, "b": 3, "rate_mbit": 1}]}, "links[0].b must be >= 0 and <= 2"),
    ({"links": [{"a": 0, "b": 1, "rate_mbit": 1}, {"a": 1, "b": 0, "rate_mbit": 2}]}, "repeats the pair 0-1"),
    ({"links": [{"a": 0, "b": 1, "rate_mbit": -5}]}, "links[0].rate_mbit must be > 0"),
    ({"links": [{"a": 0, "b": 1, "delay_ms": -1}]}, "links[0].delay_ms must be >= 0"),
    ({"links": [{"a": 0, "b": 1, "bandwidth": 5}]}, "unknown key(s) bandwidth"),
    ({"links": [{"a": 0, "rate_mbit": 5}]}, "needs the two node numbers"),
    ({"default_link": 100}, "default_link must be an object"),
    ({"cpu_quota_per_rank": 0}, "cpu_quota_per_rank must be >= 0.01"),
    ({"gpus": 8}, "unknown spec key(s) gpus"),
])
def test_bad_specs_fail_with_one_clear_line(patch, words):
    """Every invalid spec raises a UserError (one line) that names the field and the allowed values."""
    with pytest.raises(UserError) as err:
        parse_spec({**SPEC, **patch})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_spec_needs_nodes():
    with pytest.raises(UserError, match="needs \"nodes\""):
        parse_spec({"ranks_per_node": 1})


# ---------------------------------------------------------------- tc lines


def _lines(cmds):
    return [" ".join(c) for c in cmds]


def test_tc_lines_for_a_heterogeneous_matrix():
    """Node 1 shapes its egress per destination: 100 Mbit + 1 ms to node 0, 400 Mbit (no delay) to node 2."""
    lines = _lines(tc_commands(parse_spec(SPEC), 1, netem=True))
    assert lines[0] == "tc qdisc add dev eth0 root handle 1: htb default 0"
    assert any(line.startswith("tc class add dev eth0 parent 1: classid 1:10 htb rate 100000kbit ceil 100000kbit")
               for line in lines)
    assert "tc qdisc add dev eth0 parent 1:10 handle 10: netem delay 1000us limit 100000" in lines
    assert "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.77.0.1/32 flowid 1:10" in lines
    assert any(line.startswith("tc class add dev eth0 parent 1: classid 1:12 htb rate 400000kbit ceil 400000kbit")
               for line in lines)
    assert "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.77.0.3/32 flowid 1:12" in lines
    assert not any("parent 1:12 handle" in line for line in lines)  # no delay -> no netem child
    assert not any("classid 1:11" in line for line in lines)        # no class to itself


def test_tc_lines_for_the_default_link_and_without_netem():
    """Node 0 -> node 2 uses default_link; without netem the delay child is dropped but the rate stays."""
    spec = parse_spec(SPEC)
    with_netem = _lines(tc_commands(spec, 0, netem=True))
    assert any("classid 1:12 htb rate 1000000kbit" in line for line in with_netem)
    assert "tc qdisc add dev eth0 parent 1:12 handle 12: netem delay 100us limit 100000" in with_netem
    without = _lines(tc_commands(spec, 0, netem=False))
    assert not any("netem" in line for line in without)
    assert any("classid 1:11 htb rate 100000kbit" in line for line in without)


def test_delay_only_link_gets_an_unlimited_class_only_with_netem():
    spec = parse_spec({"nodes": 2, "links": [{"a": 0, "b": 1, "delay_ms": 5}]})
    lines = _lines(tc_commands(spec, 0, netem=True))
    assert any("classid 1:11 htb rate 100000000kbit" in line for line in lines)
    assert any("netem delay 5000us" in line for line in lines)
    assert _lines(tc_commands(spec, 0, netem=False)) == ["tc qdisc add dev eth0 root handle 1: htb default 0"]


def test_unshaped_pairs_get_only_the_root_qdisc():
    assert len(tc_commands(parse_spec({"nodes": 4}), 2)) == 1


# ---------------------------------------------------------------- placeholders, env, wrapper


def test_placeholders_are_substituted_and_other_braces_kept():
    spec = parse_spec(SPEC)
    values = node_values(spec, 2, 29511)
    cmd = ["torchrun", "--nnodes", "{nnodes}", "--node-rank={node_rank}", "--nproc-per-node", "{nproc_per_node}",
           "--master-addr", "{master_addr}", "--master-port", "{master_port}", "-c", "d={}; x={unknown}"]
    assert substitute(cmd, values) == ["torchrun", "--nnodes", "3", "--node-rank=2", "--nproc-per-node", "2",
                                       "--master-addr", "10.77.0.1", "--master-port", "29511", "-c",
                                       "d={}; x={unknown}"]
    env = node_env(values)
    assert env["AUTOCONF_NODE_RANK"] == "2" and env["AUTOCONF_MASTER_ADDR"] == "10.77.0.1"
    assert env["AUTOCONF_NNODES"] == "3" and env["AUTOCONF_NPROC_PER_NODE"] == "2"
    assert env["AUTOCONF_MASTER_PORT"] == "29511" and env["GLOO_SOCKET_IFNAME"] == "eth0"


def test_node_wrapper_joins_cgroup_then_netns_then_uts_namespace():
    argv = node_argv(Names("actb"), 1, ["python", "x.py"], "/sys/fs/cgroup/cpu/g/node1/cgroup.procs")
    assert argv[:5] == ["sh", "-c", 'echo $$ > "$1" && shift && exec "$@"', "sh",
                        "/sys/fs/cgroup/cpu/g/node1/cgroup.procs"]
    rest = argv[5:]
    assert rest[:7] == ["ip", "netns", "exec", "actb-node1", "unshare", "--uts", "--"]
    assert "testbed-node1" in rest and rest[-2:] == ["python", "x.py"]
    assert node_argv(Names("actb"), 0, ["true"], None)[0] == "ip"


def test_names_fit_linux_interface_limits_and_hosts_file_maps_nodes():
    names = Names("abcdefgh")
    assert len(names.host_veth(7)) <= 15 and len(names.bridge) <= 15
    with pytest.raises(ValueError):
        Names("Bad-Name")
    hosts = hosts_file(Names("actb"), ["10.77.0.1", "10.77.0.2"])
    assert "10.77.0.2\ttestbed-node1" in hosts and "::ffff:10.77.0.1\ttestbed-node0" in hosts


# ---------------------------------------------------------------- real namespaces (root + iproute2 + cgroups)


@pytest.fixture(scope="module")
def machine():
    from autoconf.testbed.system import probe

    result = probe()
    if not result["ok"]:
        pytest.skip(f"this machine cannot run the testbed: {result['reason']}")
    return result


@pytest.fixture
def testbed(machine, tmp_path):
    """A 2-node testbed named `actt` (so it never clashes with a user's `actb`); always taken down."""
    from autoconf.testbed.system import down, up

    quota = 0.2 if machine["cgroups"] else None
    spec = parse_spec({"nodes": 2, "links": [{"a": 0, "b": 1, "rate_mbit": 80}], "cpu_quota_per_rank": quota})
    try:
        state = up(spec, tmp_path, name="actt", log=lambda *_: None)
        yield state, tmp_path
    finally:
        down(tmp_path, log=lambda *_: None)


def _script(*args, state_dir):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "testbed.py"), "--state-dir", str(state_dir),
                           *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_exec_runs_every_node_in_its_namespace_with_its_hostname(testbed):
    """Each node's command sees its own address, host name, env and placeholders; exit code is the worst one."""
    from autoconf.testbed.runner import exec_nodes

    state, _ = testbed
    out = io.StringIO()
    code = exec_nodes(state, ["sh", "-c", "echo $(hostname) {node_rank}/{nnodes} $AUTOCONF_MASTER_ADDR "
                                          "$GLOO_SOCKET_IFNAME $(ip -4 -o addr show eth0 | awk '{print $4}'); "
                                          "exit {node_rank}"], timeout=20, grace_s=5, out=out)
    text = out.getvalue()
    host0, host1 = state["hostnames"]
    assert f"[node0] {host0} 0/2 10.77.0.1 eth0 10.77.0.1/24" in text, text
    assert f"[node1] {host1} 1/2 10.77.0.1 eth0 10.77.0.2/24" in text, text
    assert code == 1


@pytest.mark.slow
def test_exec_timeout_kills_every_node(testbed):
    from autoconf.testbed.runner import exec_nodes

    state, _ = testbed
    out = io.StringIO()
    code = exec_nodes(state, ["sh", "-c", "sleep 30 & sleep 30"], timeout=1, out=out)
    assert code == 124 and "timeout" in out.getvalue()
    from autoconf.testbed.system import sh

    for ns in state["netns"]:
        assert sh(["ip", "netns", "pids", ns]).stdout.strip() == ""


@pytest.mark.slow
def test_shaped_link_limits_tcp_throughput(testbed):
    """An 80 Mbit/s link carries about 10 MB/s (htb on each node's egress), measured with a raw TCP stream."""
    from autoconf.testbed.runner import exec_nodes

    state, _ = testbed
    server = ("import socket,time;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
              "s.bind(('0.0.0.0',29600));s.listen();c,_=s.accept();n=0;t=time.perf_counter()\n"
              "while True:\n b=c.recv(1<<20)\n if not b: break\n n+=len(b)\n"
              "print('MBps',n/(time.perf_counter()-t)/1e6)")
    client = ("import socket,time;time.sleep(1);c=socket.create_connection(('{master_addr}',29600));"
              "d=b'x'*(1<<20)\nfor _ in range(15): c.sendall(d)\nc.close()")
    out = io.StringIO()
    code = exec_nodes(state, ["sh", "-c", f"if [ {{node_rank}} = 0 ]; then python3 -c \"{server}\"; "
                                          f"else python3 -c \"{client}\"; fi"], timeout=40, out=out)
    assert code == 0, out.getvalue()
    rate = float(out.getvalue().split("MBps")[1].split()[0])
    assert 7.0 < rate < 11.0, out.getvalue()  # 80 Mbit/s = 10 MB/s, less TCP/IP header overhead


@pytest.mark.slow
def test_rank_cpu_quota_caps_a_busy_loop(testbed):
    """A busy loop in a 0.2-CPU cgroup gets at most ~0.2 CPU (a ceiling: on a loaded host it can get less)."""
    state, _ = testbed
    if not state["cgroups"]:
        pytest.skip("no cgroup cpu controller on this machine")
    from autoconf.testbed.runner import exec_nodes

    loop = ("import time;t=time.perf_counter();c=time.process_time()\n"
            "while time.perf_counter()-t<2: pass\n"
            "print('share',(time.process_time()-c)/(time.perf_counter()-t))")
    out = io.StringIO()
    assert exec_nodes(state, ["python3", "-c", loop], timeout=30, out=out) == 0
    shares = [float(line.split("share")[1]) for line in out.getvalue().splitlines() if "share" in line]
    assert len(shares) == 2 and all(0 < s < 0.3 for s in shares), out.getvalue()


@pytest.mark.slow
def test_cli_up_refuses_a_second_testbed_and_down_is_idempotent(machine, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"nodes": 2}))
    try:
        first = _script("up", "--spec", str(spec), "--name", "actu", state_dir=tmp_path)
        assert first.returncode == 0, first.stderr
        assert "10.77.0.2" in _script("status", state_dir=tmp_path).stdout
        second = _script("up", "--spec", str(spec), "--name", "actu", state_dir=tmp_path)
        assert second.returncode == 2 and "already up" in second.stderr and second.stderr.count("\n") == 1
    finally:
        assert _script("down", state_dir=tmp_path).returncode == 0
    assert _script("down", state_dir=tmp_path).returncode == 0
    assert not (tmp_path / "state.json").exists()
    assert "actu-node0" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_failed_up_removes_what_it_made(machine, tmp_path, monkeypatch):
    """A name clash is refused before anything is made; an `up` failing halfway (here: a bad tc line after the
    namespaces, veths and bridge exist) removes all of it and its state file."""
    from autoconf.testbed import system
    from autoconf.testbed.system import sh, up

    sh(["ip", "link", "add", "actf-v1", "type", "veth", "peer", "name", "actf-x1"])
    try:
        with pytest.raises(UserError, match="already exist"):
            up(parse_spec({"nodes": 2}), tmp_path, name="actf", log=lambda *_: None)
    finally:
        sh(["ip", "link", "del", "actf-v1"], check=False)
    monkeypatch.setattr(system, "tc_commands", lambda *a, **k: [["tc", "qdisc", "add", "dev", "nosuch0", "root",
                                                                  "htb"]])
    with pytest.raises(UserError, match="removed what it made"):
        up(parse_spec({"nodes": 2}), tmp_path, name="actf", log=lambda *_: None)
    assert not (tmp_path / "state.json").exists()
    assert "actf-node0" not in sh(["ip", "netns", "list"]).stdout
    assert sh(["ip", "link", "show", "actf-br"], check=False).returncode != 0
    assert sh(["ip", "link", "show", "actf-v0"], check=False).returncode != 0
    assert not Path("/etc/netns/actf-node0").exists()
