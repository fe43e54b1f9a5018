"""A TTPython-style sensing pipeline, written once against the testbed's app API.

    sensors --readings (best effort)--> edge --aggregates (ensure=True)--> cloud
       ^                                                                     |
       +------------------- control (ensure=True) --------------------------+

- Each sensor (``sensor``) samples every PERIOD_S and sends a timestamped
  reading to the edge.
- The edge (``edge``) gathers readings into windows of WINDOW_S. A window
  closes GRACE_S after its end: what arrived by then is averaged and
  forwarded to the cloud; a reading that arrives later missed its deadline
  (recorded as ``deadline_miss``).
- The cloud (``cloud``) records the end-to-end latency of every window's
  oldest reading (sensor sample -> cloud), and every CONTROL_EVERY windows
  sends each sensor a control message (``ensure=True``) whose latency the
  sensor records.

Run it: ``python -m testbed run examples/pipeline/pipeline.yaml`` (emulated,
then compared with the simulation), ``python -m testbed simulate
examples/pipeline/pipeline.yaml`` (simulated only). Times are seconds of
``ens.now()``: real seconds since the start when emulated, simulated ones
when simulated. The API is documented in docs/apps.md.
"""

PERIOD_S = 0.02        # each sensor: 50 readings a second
WINDOW_S = 0.2         # the edge aggregates per 200 ms window...
GRACE_S = 0.02         # ...closed 20 ms after the window ends: the deadline
CONTROL_EVERY = 10     # the cloud steers the sensors every 10 windows (2 s)
EDGE, CLOUD = "edge", "cloud"


def sensor(ens):
    state = {"seq": 0}
    first = ens.random.uniform(0, PERIOD_S)      # sensors start a little apart

    def sample():
        ens.send(EDGE, {"sensor": ens.name, "seq": state["seq"], "t": ens.now(),
                        "value": ens.random.gauss(20.0, 2.0)}, flow="readings")
        state["seq"] += 1
        # On a fixed grid, not PERIOD_S after this call: a late callback
        # must not make every later sample late too.
        ens.call_later(max(0.0, first + state["seq"] * PERIOD_S - ens.now()), sample)

    def on_message(src, msg):
        if msg.get("kind") == "control":
            ens.record("control_latency_s", ens.now() - msg["t"])

    ens.on_message(on_message)
    ens.call_later(first, sample)


def edge(ens):
    windows = {}                       # window number -> readings

    def on_message(src, msg):
        if "sensor" not in msg:
            return
        w = int(msg["t"] // WINDOW_S)
        if w in closed:
            ens.record("deadline_miss", 1, sensor=msg["sensor"])
            return
        windows.setdefault(w, []).append(msg)

    closed = set()

    def close(w):
        closed.add(w)
        readings = windows.pop(w, [])
        if readings:
            values = [r["value"] for r in readings]
            ens.send(CLOUD, {"window": w, "n": len(readings),
                             "mean": sum(values) / len(values),
                             "oldest": min(r["t"] for r in readings)},
                     ensure=True, flow="aggregates")
        ens.call_later(max(0.0, (w + 2) * WINDOW_S + GRACE_S - ens.now()), close, w + 1)

    ens.on_message(on_message)
    ens.call_later(WINDOW_S + GRACE_S, close, 0)


def cloud(ens):
    sensors = [p for p in ens.peers if p not in (EDGE, CLOUD)]
    seen = {"windows": 0}

    def on_message(src, msg):
        if "window" not in msg:
            return
        ens.record("e2e_latency_s", ens.now() - msg["oldest"])
        seen["windows"] += 1
        if seen["windows"] % CONTROL_EVERY == 0:
            for s in sensors:
                ens.send(s, {"kind": "control", "t": ens.now(), "mean": msg["mean"]},
                         ensure=True, flow="control")

    ens.on_message(on_message)
