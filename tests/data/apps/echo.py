"""Test app: 'ping' sends numbered pings, 'pong' echoes them; records RTTs."""
COUNT = 50


def ping(ens):
    state = {"n": 0}

    def tick():
        if state["n"] < COUNT:
            ens.send("pong", {"n": state["n"], "t": ens.now()}, ensure=state["n"] % 2 == 0)
            state["n"] += 1
            ens.call_later(0.05, tick)

    ens.on_message(lambda src, msg: ens.record("rtt_s", ens.now() - msg["t"], n=msg["n"]))
    tick()


def pong(ens):
    ens.on_message(lambda src, msg: ens.send(src, msg, flow="echo"))


def crash(ens):
    ens.call_later(0.1, lambda: 1 / 0)
    ens.call_later(0.2, lambda: ens.record("still_alive", 1))


def forever(ens):
    def tick():
        ens.record("tick", ens.now())
        ens.call_later(1.0, tick)
    tick()


def stopper(ens):
    ens.call_later(1.0, ens.stop)
    ens.call_later(2.0, lambda: ens.record("after_stop", 1))
    ens.call_later(0.5, lambda: ens.record("before_stop", 1))
