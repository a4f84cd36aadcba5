import pytest

from testbed.endpoints import write_endpoints

from .stack import Envoy, Epp, PodGroup

MODES = ["FULL_DUPLEX_STREAMED", "BUFFERED", "STREAMED", "STREAMED_EARLY"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("stack"))
    pods = PodGroup(3)
    efile = f"{tmp}/endpoints.yaml"
    write_endpoints(efile, pods.pods)
    epp = Epp(tmp, efile, "--decision-header", "--refresh-metrics-interval", "50ms", "--objective", "batch=-1")
    envoy = Envoy(tmp, MODES, epp.ports["grpc"])

    class Stack:
        pass
    s = Stack()
    s.pods, s.epp, s.envoy, s.tmp = pods, epp, envoy, tmp
    s.pool = [p.address for p in pods.pods]
    yield s
    envoy.stop()
    epp.stop()
    pods.close()
