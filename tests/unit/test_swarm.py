"""The swarm backend without a swarm: service specs (cap_add, placement,
mounts, labels, limits), names, constraints, task addresses, teardown and
the stale sweep against a fake engine, image distribution, and the CLI
accepting ``--backend swarm``. tests/e2e/test_swarm_e2e.py runs it for real."""
from __future__ import annotations

import docker.errors
import pytest

from testbed.cli import build_parser
from testbed.emulate import net
from testbed.emulate.backends import BackendError, make_backend
from testbed.emulate.backends import swarm
from testbed.spec.model import EnsembleSettings, LinkSpec, Topology

RID = "a1b2c3"


def _spec(**kw):
    args = dict(rid=RID, ensemble="alpha", image="sha256:" + "ab" * 32,
                argv=["python3", "-m", "testbed.guest.agent"], network=f"ttnet-{RID}",
                run_dir="/srv/results/run1")
    args.update(kw)
    return swarm.service_spec(**args)


def test_spec_grants_net_admin_to_the_task_and_runs_one_replica_never_restarted():
    spec = _spec()
    task = spec["task_template"]
    cs = task["ContainerSpec"]
    assert cs["CapabilityAdd"] == ["CAP_NET_ADMIN"]
    assert cs["Image"].startswith("sha256:")          # by ID: no registry pull
    assert cs["Command"] == ["python3", "-m", "testbed.guest.agent"]
    assert cs["Hostname"] == "alpha" and cs["Init"] is True
    assert cs["Env"] and f"TTNET_RUN={RID}" in cs["Env"] and "TTNET_ENSEMBLE=alpha" in cs["Env"]
    assert task["RestartPolicy"]["Condition"] == "none"
    assert spec["mode"] == {"replicated": {"Replicas": 1}}
    assert spec["endpoint_spec"]["Mode"] == "dnsrr"
    assert [n["Target"] for n in task["Networks"]] == [f"ttnet-{RID}"]
    assert spec["name"] == f"ttnet-{RID}-alpha"


def test_spec_labels_service_and_containers_with_run_and_ensemble():
    spec = _spec()
    want = {"ttnet.run": RID, "ttnet.ensemble": "alpha", "ttnet.backend": "swarm"}
    assert spec["labels"] == want
    assert spec["task_template"]["ContainerSpec"]["Labels"] == want


def test_spec_mounts_run_dir_rw_and_shared_dir_ro():
    spec = _spec(shared={"/home/me/topo": "/topology"})
    mounts = spec["task_template"]["ContainerSpec"]["Mounts"]
    assert {"Target": "/results", "Source": "/srv/results/run1", "Type": "bind",
            "ReadOnly": False} in mounts
    assert any(m["Target"] == "/topology" and m["Source"] == "/home/me/topo"
               and m["ReadOnly"] for m in mounts)


def test_spec_spreads_by_default_and_carries_constraints():
    plain = _spec()["task_template"]["Placement"]
    assert plain["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.id"}}]
    assert "Constraints" not in plain
    placed = _spec(constraints=("node.labels.zone==edge", "node.role!=manager"))
    assert placed["task_template"]["Placement"]["Constraints"] == [
        "node.labels.zone==edge", "node.role!=manager"]


def test_spec_limits_cpus_and_memory_like_docker():
    spec = _spec(settings=EnsembleSettings(cpus=0.5, memory=256 * 2**20))
    lim = spec["task_template"]["Resources"]["Limits"]
    assert lim == {"NanoCPUs": 500_000_000, "MemoryBytes": 256 * 2**20}
    assert "Resources" not in _spec(settings=EnsembleSettings())["task_template"]


@pytest.mark.parametrize("name", ["a", "edge-1", "pi_2", "A9"])
def test_service_names_from_valid_ensembles(name):
    assert swarm.service_name(RID, name) == f"ttnet-{RID}-{name}"


@pytest.mark.parametrize("name", ["a.b", "-a", "a-", "x" * 51, "a b"])
def test_service_names_refuse_what_swarm_refuses(name):
    with pytest.raises(BackendError, match="cannot name a swarm service"):
        swarm.service_name(RID, name)


def test_fifty_characters_is_the_longest_ensemble_name():
    assert len(swarm.service_name(RID, "x" * 50)) == 63


def test_constraints_validated():
    assert swarm.validate_constraints(None) == ()
    assert swarm.validate_constraints(["node.hostname == pi1", "node.labels.zone!=lab"]) == (
        "node.hostname == pi1", "node.labels.zone!=lab")
    for bad in ("node.role==worker", ["node.role=worker"], ["==x"], [3]):
        with pytest.raises(BackendError, match="placement"):
            swarm.validate_constraints(bad, "a")


def test_task_ip_is_the_address_on_the_run_network():
    task = {"ID": "t1", "NetworksAttachments": [
        {"Network": {"Spec": {"Name": "ingress"}}, "Addresses": ["10.0.0.5/24"]},
        {"Network": {"Spec": {"Name": f"ttnet-{RID}"}}, "Addresses": ["10.210.7.3/24"]}]}
    assert swarm._task_ip(task, f"ttnet-{RID}") == "10.210.7.3"
    with pytest.raises(BackendError, match="no address"):
        swarm._task_ip(task, "ttnet-ffffff")


# --- teardown and the stale sweep against a fake engine ---------------------

class FakeAPI:
    """Just what teardown needs of docker's low-level API, with a log."""

    def __init__(self, rid=RID, manager=True, busy_network_tries=0):
        self.calls: list[tuple] = []
        self.manager = manager
        self.busy = busy_network_tries
        mine, other = {"ttnet.run": rid}, {"ttnet.run": "ffffff"}
        self.svcs = [{"ID": "s1", "Spec": {"Name": f"ttnet-{rid}-a", "Labels": mine}},
                     {"ID": "s9", "Spec": {"Name": "ttnet-ffffff-a", "Labels": other}}]
        self.cfgs = [{"ID": "c1", "Spec": {"Name": f"ttnet-{rid}-cfg", "Labels": mine}}]
        self.ctrs = [{"Id": "k1", "Names": [f"/ttnet-{rid}-a.1.x"], "Labels": mine},
                     {"Id": "k9", "Names": ["/ttnet-ffffff-a.1.y"], "Labels": other}]
        self.nets = [{"Id": "n1", "Name": f"ttnet-{rid}", "Labels": mine},
                     {"Id": "n9", "Name": "ttnet-ffffff", "Labels": other}]

    @staticmethod
    def _match(items, filters, key="Labels"):
        want = (filters or {}).get("label")
        out = []
        for it in items:
            labels = it["Spec"]["Labels"] if "Spec" in it else it[key]
            if want is None:
                out.append(it)
            elif "=" in want:
                k, v = want.split("=", 1)
                if labels.get(k) == v:
                    out.append(it)
            elif want in labels:
                out.append(it)
        return out

    def info(self):
        return {"Swarm": {"LocalNodeState": "active", "ControlAvailable": self.manager,
                          "NodeID": "node1"}}

    def services(self, filters=None):
        return self._match(self.svcs, filters)

    def configs(self, filters=None):
        return self._match(self.cfgs, filters)

    def containers(self, all=False, filters=None):
        return self._match(self.ctrs, filters)

    def networks(self, filters=None):
        return self._match(self.nets, filters)

    def remove_service(self, sid):
        self.calls.append(("service", sid))
        svc = next(s for s in self.svcs if s["ID"] == sid)
        self.svcs.remove(svc)
        # swarm removes the service's task containers itself
        self.ctrs = [c for c in self.ctrs if not c["Names"][0].startswith(
            "/" + svc["Spec"]["Name"] + ".")]

    def remove_config(self, cid):
        self.calls.append(("config", cid))
        self.cfgs = [c for c in self.cfgs if c["ID"] != cid]

    def remove_container(self, cid, force=False):
        self.calls.append(("container", cid))
        self.ctrs = [c for c in self.ctrs if c["Id"] != cid]

    def inspect_network(self, nid):
        return {"Containers": {}}        # the engine lists no endpoint to disconnect

    def remove_network(self, nid):
        if any(c["Labels"]["ttnet.run"] == RID for c in self.ctrs) or self.busy:
            self.busy = max(0, self.busy - 1)
            raise docker.errors.APIError("network has active endpoints")
        self.calls.append(("network", nid))
        self.nets = [n for n in self.nets if n["Id"] != nid]


class FakeClient:
    def __init__(self, api):
        self.api = api


@pytest.fixture
def no_claims(monkeypatch, tmp_path):
    monkeypatch.setattr(net, "RUNS_DIR", tmp_path / "runs")
    return tmp_path / "runs"


def test_teardown_removes_only_the_runs_services_configs_then_network(no_claims):
    api = FakeAPI(busy_network_tries=2)
    removed = swarm.teardown_run(FakeClient(api), RID, wait_s=5)
    assert api.calls == [("service", "s1"), ("config", "c1"), ("network", "n1")]
    assert removed == [f"service ttnet-{RID}-a", f"config ttnet-{RID}-cfg",
                       f"network ttnet-{RID}"]
    # The other run's things are untouched.
    assert [s["ID"] for s in api.svcs] == ["s9"] and [n["Id"] for n in api.nets] == ["n9"]
    assert [c["Id"] for c in api.ctrs] == ["k9"]


def test_teardown_removes_the_clock_container_first_and_does_not_wait_for_it(no_claims):
    """The clock reference is a plain container: swarm never removes it,
    so teardown must, before waiting for the task containers to go."""
    import time
    api = FakeAPI()
    api.ctrs.append({"Id": "ck", "Names": [f"/ttnet-{RID}-clock"],
                     "Labels": {"ttnet.run": RID, swarm.ROLE_LABEL: "clock"}})
    t = time.monotonic()
    removed = swarm.teardown_run(FakeClient(api), RID, wait_s=5)
    assert time.monotonic() - t < 2
    assert api.calls[0] == ("container", "ck") and ("network", "n1") in api.calls
    assert removed[0] == f"container ttnet-{RID}-clock"
    assert [c["Id"] for c in api.ctrs] == ["k9"]


def test_down_stops_the_clock_reference_and_keeps_its_log(no_claims, tmp_path):
    api = FakeAPI()
    api.ctrs.append({"Id": "ck", "Names": [f"/ttnet-{RID}-clock"],
                     "Labels": {"ttnet.run": RID, swarm.ROLE_LABEL: "clock"}})
    stopped = []
    api.inspect_container = lambda cid: {"State": {"Running": True}}
    api.stop = lambda cid, timeout: stopped.append(cid)
    api.logs = lambda cid, stdout, stderr: b"clock responder: answered 64\n" \
        if cid == "ck" else b"agent\n"
    backend = swarm.SwarmBackend(client=FakeClient(api), run_id=RID, image="img")
    (tmp_path / "logs").mkdir()
    backend._run_dir = tmp_path
    backend._ids, backend.hosts, backend._clock_id = {"a": "k1"}, {"a": None}, "ck"
    backend.down()
    assert stopped == ["k1", "ck"]
    assert (tmp_path / "logs" / "clock.log").read_text() == "clock responder: answered 64\n"
    assert ("container", "ck") in api.calls


def test_teardown_without_a_swarm_still_removes_containers_and_network(no_claims):
    api = FakeAPI(manager=False)
    swarm.teardown_run(FakeClient(api), RID, wait_s=0.3)
    assert ("service", "s1") not in api.calls
    assert ("container", "k1") in api.calls and ("network", "n1") in api.calls


def test_teardown_gives_up_on_a_network_that_stays_busy(no_claims):
    api = FakeAPI(busy_network_tries=10**6)
    with pytest.raises(docker.errors.APIError):
        swarm.teardown_run(FakeClient(api), RID, wait_s=0.5)


def test_cleanup_stale_spares_live_runs(no_claims, monkeypatch):
    api = FakeAPI()
    live = net.RunClaim("ffffff", "swarm", "10.210.9.0/24", pid=1)   # pid 1 is alive
    monkeypatch.setattr(net, "claims", lambda: [live])
    removed = swarm.cleanup_stale(FakeClient(api))
    assert f"service ttnet-{RID}-a" in removed
    assert not any("ffffff" in r for r in removed)
    assert [s["ID"] for s in api.svcs] == ["s9"]


def test_resources_lists_services_with_their_run(no_claims):
    assert swarm.resources_present(FakeClient(FakeAPI())) == [
        (RID, f"swarm service ttnet-{RID}-a"), ("ffffff", "swarm service ttnet-ffffff-a")]
    assert swarm.resources_present(FakeClient(FakeAPI(manager=False))) == []


def test_down_stops_tasks_keeps_logs_and_tears_down(no_claims, tmp_path):
    api = FakeAPI()
    stopped = []
    api.inspect_container = lambda cid: {"State": {"Running": True}}
    api.stop = lambda cid, timeout: stopped.append(cid)
    api.logs = lambda cid, stdout, stderr: b"agent said bye\n"
    backend = swarm.SwarmBackend(client=FakeClient(api), run_id=RID, image="img")
    backend._ids = {"a": "k1"}
    backend.hosts = {"a": None}
    backend.down()
    backend.down()                                     # idempotent
    assert stopped == ["k1"]
    assert backend.logs("a") == "agent said bye\n"
    assert ("service", "s1") in api.calls and ("network", "n1") in api.calls


def test_up_refuses_without_a_swarm_and_on_a_worker(tmp_path, no_claims):
    topo = Topology("t", ("a", "b"), LinkSpec())
    for state, manager, want in (("inactive", False, "not part of a swarm"),
                                 ("active", False, "worker")):
        api = FakeAPI(manager=manager)
        api.info = lambda s=state, m=manager: {"Swarm": {"LocalNodeState": s,
                                                          "ControlAvailable": m}}
        backend = swarm.SwarmBackend(client=FakeClient(api), run_id=RID, image="img")
        with pytest.raises(BackendError, match=want):
            backend.up(topo, tmp_path / state, lambda h: ["true"])


# --- image distribution, backend choice, CLI -------------------------------

class FakeEngine:
    def __init__(self, has: bool, url: str):
        self.loaded: list[bytes] = []
        self.has, self.base_url = has, url

    def inspect_image(self, image):
        if not self.has:
            raise docker.errors.ImageNotFound("no")
        return {"Id": image}

    def load_image(self, data):
        self.loaded.append(b"".join(data))

    def get_image(self, image):
        return iter([b"tar", b"ball"])


def test_distribute_image_loads_only_where_missing():
    here = FakeClient(FakeEngine(True, "unix://local"))
    there, already = FakeEngine(False, "ssh://node2"), FakeEngine(True, "ssh://node3")
    got = swarm.distribute_image(here, "sha256:x", [FakeClient(there), FakeClient(already)])
    assert got == ["ssh://node2"]
    assert there.loaded == [b"tarball"] and already.loaded == []


def test_engines_from_env_empty_by_default():
    assert swarm.engines_from_env({}) == []


def test_make_backend_swarm():
    backend = make_backend("swarm", client=FakeClient(FakeAPI()), run_id=RID)
    assert isinstance(backend, swarm.SwarmBackend) and backend.name == "swarm"
    assert backend.network == f"ttnet-{RID}"
    backend._down = True                 # nothing was made; keep atexit quiet


@pytest.mark.parametrize("command", [["run", "x.yaml"], ["up", "x.yaml"], ["calibrate"],
                                     ["all"]])
def test_cli_takes_backend_swarm(command):
    args = build_parser().parse_args([*command, "--backend", "swarm"])
    assert args.backend == "swarm"


# --- placement: in topology files, the schema and the service spec ---------

def test_topology_placement_parsed_round_tripped_and_checked_by_the_schema():
    import yaml

    from testbed.spec.schema import topology_schema
    from testbed.spec.topology import TopologyError, load_topology_text, topology_to_yaml
    text = ("name: p\nensembles:\n  a: {placement: [node.role==manager, "
            "'node.labels.zone != edge']}\n  b: {}\n"
            "flows: [{from: a, to: b, size: 10, count: 1, interval: 1s}]\n")
    topo = load_topology_text(text)
    want = ("node.role==manager", "node.labels.zone != edge")
    assert topo.settings_of("a").placement == want and topo.settings_of("b").placement is None
    again = load_topology_text(topology_to_yaml(topo))
    assert again.settings_of("a").placement == want
    assert swarm.validate_constraints(topo.settings_of("a").placement, "a") == (
        "node.role==manager", "node.labels.zone != edge")
    prop = topology_schema()["$defs"]["ensemble"]["properties"]["placement"]
    assert prop["type"] == "array" and prop["minItems"] == 1
    for bad in ("node.role==manager", "[]", "[node.role=manager]", "[3]"):
        with pytest.raises(TopologyError, match="placement"):
            load_topology_text(text.replace("[node.role==manager, 'node.labels.zone != edge']",
                                            bad))
    assert yaml.safe_load(topology_to_yaml(topo))["ensembles"]["a"]["placement"] == list(want)
