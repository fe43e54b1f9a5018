import pytest

from ttnet import NoRouteError, TTNetwork, TTNetworkInterfaceType, TTNetworkMessageUDP


@pytest.fixture
def net(udp_port):
    n = TTNetwork("a", TTNetworkInterfaceType.UDP_IP, ip_addr="127.0.0.1", port=udp_port())
    yield n
    n.close()


def test_routes_and_create_message(net):
    net.add_route("b", "127.0.0.1:9100")
    assert net.get_recipient_address("b") == ("127.0.0.1", 9100)
    net.update_route("b", "127.0.0.2:9101")
    msg = net.create_message("b", [1, 2])
    assert isinstance(msg, TTNetworkMessageUDP) and msg.get_address() == ("127.0.0.2", 9101)


def test_unknown_route_is_a_clear_error(net):
    with pytest.raises(NoRouteError, match="no route to ensemble 'zz'.*add_route"):
        net.create_message("zz", 1)
    with pytest.raises(NoRouteError):
        net.update_route("zz", "127.0.0.1:9000")


@pytest.mark.parametrize("addr", ["127.0.0.1", "127.0.0.1:abc", "300.0.0.1:9000", "1.2.3.4:80", 5])
def test_bad_route_address(net, addr):
    with pytest.raises(ValueError):
        net.add_route("b", addr)


def test_conflicting_add_route(net):
    net.add_route("b", "127.0.0.1:9100")
    net.add_route("b", "127.0.0.1:9100")            # same: fine
    with pytest.raises(ValueError, match="update_route"):
        net.add_route("b", "127.0.0.1:9200")


def test_end_to_end_between_two_networks(udp_port):
    import threading
    got, ev = [], threading.Event()
    b = TTNetwork("b", TTNetworkInterfaceType.UDP_IP, port=udp_port(),
                  receiver_function=lambda m: (got.append(m), ev.set()))
    with b, TTNetwork("a", TTNetworkInterfaceType.UDP_IP, port=udp_port()) as a:
        a.add_route("b", f"127.0.0.1:{b.interface.port}")
        h = a.send_message(a.create_message("b", ("hello", 1)), ensure=True)
        assert h.wait(5) and ev.wait(5)
        assert b.decode(got[0]) == ("hello", 1)


def test_unknown_interface_type():
    with pytest.raises(ValueError):
        TTNetwork("a", "carrier-pigeon")
    with pytest.raises(ValueError, match="sim="):
        TTNetwork("a", TTNetworkInterfaceType.Simulated)
