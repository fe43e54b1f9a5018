"""Impairment accuracy between two Docker ensembles (the default backend):
the probe runs inside the containers; impairments are applied from the host
into their namespaces before either starts."""
from __future__ import annotations

import json

import pytest

from testbed.emulate.backends import make_backend
from testbed.emulate.impair import Impairments
from testbed.spec.model import LinkSpec, Topology

pytestmark = [pytest.mark.e2e]

PORT = 9400
SERVE_S = 20


def _probe(tmp_path, links: dict[tuple[str, str], LinkSpec], ping_args: list[str]) -> dict:
    topo = Topology("probe", ("a", "b"), LinkSpec(), links=links)
    backend = make_backend("docker")
    imp = Impairments(backend.run_id[-4:], seed=11, log_dir=tmp_path)

    def command(h):
        if h.name == "b":
            # the run lasts as long as this server: long enough for the
            # pinger's few seconds on a slow machine, not a minute
            return ["python3", "-m", "testbed.guest.probe", "serve", f"--port={PORT}",
                    f"--duration={SERVE_S}"]
        # b's address is known only once hosts exist: the hook writes it to
        # the shared results directory, read here after the start gate.
        args = ", ".join(repr(a) for a in ping_args)
        return ["python3", "-c",
                "import pathlib, runpy, sys, time; time.sleep(0.5); "
                f"ip = pathlib.Path({h.results_dir!r}, 'b.ip').read_text(); "
                f"sys.argv = ['probe', 'ping', ip, '--port={PORT}', {args}]; "
                "runpy.run_module('testbed.guest.probe', run_name='__main__')"]

    def before_start(hs):
        (tmp_path / "b.ip").write_text(hs["b"].ip)
        for h in hs.values():
            other = hs["b" if h.name == "a" else "a"]
            imp.apply(h.netns_path, h.ifname, {other.ip: topo.link(h.name, other.name)},
                      label=h.name)

    try:
        with backend:
            backend.up(topo, tmp_path, command, before_start=before_start)
            codes = backend.wait(90)
            out = backend.logs("a")
    finally:
        imp.close()
    assert codes["a"] == 0, out
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_docker_20ms_each_way_measures_40ms_rtt(tmp_path):
    d = LinkSpec(delay_s=0.020)
    res = _probe(tmp_path, {("a", "b"): d, ("b", "a"): d}, ["--count=300", "--interval=0.005"])
    print("docker, 20 ms each way:", res)
    assert res["received"] == 300
    assert abs(res["rtt_median_s"] - 0.040) <= 0.001 + 0.05 * 0.040
    assert res["rtt_min_s"] >= 0.040


@pytest.mark.timeout(120)
def test_docker_10pct_loss_measures_10pct_over_2000_probes(tmp_path):
    res = _probe(tmp_path, {("a", "b"): LinkSpec(loss=0.10)},
                 ["--count=2000", "--interval=0.001", "--timeout=1.0"])
    print("docker, 10% loss a->b:", res)
    assert abs(res["loss_forward"] - 0.10) <= 0.03
    assert res["loss_reverse"] == 0
