"""Root samplers (Jaeger semantics) and the remote sampler against a local sampling endpoint."""
import http.server
import json
import math
import threading
import time

import pytest

from bu_osprofiler import _core, exporters

from jaeger_wire import reset_core, wait_until


@pytest.fixture(autouse=True)
def clean_core():
    reset_core(exporters)
    yield
    reset_core(exporters)


def test_const():
    _core.set_sampler("const", 0)
    assert not any(_core.sample(_core.rand64()) for _ in range(1000))
    _core.set_sampler("const", 1)
    assert all(_core.sample(_core.rand64()) for _ in range(1000))


def test_probabilistic_boundary_and_rate():
    rate = 0.25
    _core.set_sampler("probabilistic", rate)
    boundary = int(rate * 2 ** 64)
    assert _core.sample(boundary - 1) and not _core.sample(boundary)
    assert _core.sample(0) and not _core.sample(2 ** 64 - 1)
    n = 20000
    hits = sum(_core.sample(_core.rand64()) for _ in range(n))
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(hits - n * rate) < 6 * sigma  # fails by chance with p < 1e-8
    _core.set_sampler("probabilistic", 1.0)
    assert _core.sample(2 ** 64 - 1)
    with pytest.raises(ValueError):
        _core.set_sampler("probabilistic", 1.5)


def test_ratelimiting_allows_the_rate_per_second():
    rate = 20.0
    _core.set_sampler("ratelimiting", rate)
    burst = sum(_core.sample(_core.rand64()) for _ in range(1000))
    assert burst in (20, 21)  # the bucket starts full (max balance = rate)
    t0 = time.monotonic()
    time.sleep(0.5)
    hits = sum(_core.sample(_core.rand64()) for _ in range(1000))
    elapsed = time.monotonic() - t0
    # Credits accrued at `rate` per second while we slept (plus less than one left over).
    assert math.floor(rate * 0.5) <= hits <= min(rate, math.ceil(rate * elapsed) + 1)
    _core.set_sampler("ratelimiting", 0.5)  # max balance max(rate, 1): one trace, then none
    assert [_core.sample(1) for _ in range(3)] == [True, False, False]


class SamplingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _SamplingHandler)
        self.answer = (200, {"strategyType": "PROBABILISTIC",
                             "probabilisticSampling": {"samplingRate": 0.5}})
        self.queries = []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def address(self):
        return "127.0.0.1:%d" % self.server_address[1]


class _SamplingHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.queries.append(self.path)
        status, doc = self.server.answer
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def sampling_server():
    s = SamplingServer()
    yield s
    s.shutdown()
    s.server_close()


def test_remote_sampler_follows_the_strategy_and_falls_back(sampling_server):
    url = exporters.sampling_url(sampling_server.address, None, "nova api")
    rs = exporters.RemoteSampler(url, ("probabilistic", 0.001))
    assert rs.poll_once()
    assert _core.get_sampler() == ("probabilistic", 0.5)
    assert sampling_server.queries == ["/sampling?service=nova+api"]
    sampling_server.answer = (200, {"strategyType": "RATE_LIMITING",
                                    "rateLimitingSampling": {"maxTracesPerSecond": 7}})
    assert rs.poll_once()
    assert _core.get_sampler() == ("ratelimiting", 7.0)
    sampling_server.answer = (200, {"strategyType": "PROBABILISTIC",
                                    "probabilisticSampling": {"samplingRate": 1.0},
                                    "operationSampling": {"defaultSamplingProbability": 0.2,
                                                          "perOperationStrategies": []}})
    assert rs.poll_once()
    assert _core.get_sampler() == ("probabilistic", 0.2)
    for bad in [(500, {}), (200, b"not json"), (200, {"strategyType": "WHATEVER"}),
                (200, {"strategyType": "PROBABILISTIC",
                       "probabilisticSampling": {"samplingRate": 3}})]:
        _core.set_sampler("const", 1)
        sampling_server.answer = bad
        assert not rs.poll_once()
        assert _core.get_sampler() == ("probabilistic", 0.001)


def test_remote_sampler_unreachable_uses_initial():
    rs = exporters.RemoteSampler("http://127.0.0.1:9/sampling?service=x", ("probabilistic", 0.1),
                                 timeout=1.0)
    assert not rs.poll_once()
    assert _core.get_sampler() == ("probabilistic", 0.1)


def test_exporter_with_remote_sampler_polls(sampling_server):
    sampling_server.answer = (200, {"strategyType": "RATE_LIMITING",
                                    "rateLimitingSampling": {"maxTracesPerSecond": 3}})
    exp = exporters.create("jaeger://127.0.0.1:9", {
        "sampler": "remote", "sampler_param": 0.05, "service_name": "svc",
        "sampling_server": sampling_server.address, "sampling_refresh_interval": 0.05,
        "flush_interval": 60})
    assert exp.remote_sampler.initial == ("probabilistic", 0.05)
    exp.start()
    try:
        assert wait_until(lambda: _core.get_sampler() == ("ratelimiting", 3.0))
        sampling_server.answer = (200, {"strategyType": "PROBABILISTIC",
                                        "probabilisticSampling": {"samplingRate": 0.75}})
        assert wait_until(lambda: _core.get_sampler() == ("probabilistic", 0.75))
        assert all(q == "/sampling?service=svc" for q in sampling_server.queries)
    finally:
        exp.shutdown(2.0)


def test_sampling_url_forms():
    assert exporters.sampling_url(None, "agent", "s") == "http://agent:5778/sampling?service=s"
    assert exporters.sampling_url("h:1", None, "s") == "http://h:1/sampling?service=s"
    assert exporters.sampling_url("http://h:2/", None, "s") == "http://h:2/sampling?service=s"
    assert exporters.sampling_url("http://h:2/api/sampling", None, "s") == \
        "http://h:2/api/sampling?service=s"


def test_configure_remote_sampler(sampling_server):
    import bu_osprofiler
    sampling_server.answer = (200, {"strategyType": "PROBABILISTIC",
                                    "probabilisticSampling": {"samplingRate": 0.3}})
    try:
        bu_osprofiler.configure("remote-svc", "jaeger://127.0.0.1:9", sampler="remote",
                                sampling_server=sampling_server.address,
                                sampling_refresh_interval=0.05, flush_interval=60)
        assert wait_until(lambda: _core.get_sampler() == ("probabilistic", 0.3))
        assert "/sampling?service=remote-svc" in sampling_server.queries
        sampling_server.answer = (503, {})
        # Unreachable / failing: back to the initial sampler (Jaeger's default 0.001).
        assert wait_until(lambda: _core.get_sampler() == ("probabilistic", 0.001))
    finally:
        bu_osprofiler.shutdown(2.0)
