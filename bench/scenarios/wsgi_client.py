"""Load generator for the WSGI scenario: runs as a second process (standard library only).

Usage: wsgi_client.py PORT REQUESTS CONCURRENCY HEADERS_JSON
Closed loop: CONCURRENCY threads each send GET / one after another (one connection per request,
as wsgiref speaks HTTP/1.0); prints JSON with p50/p90/p99 latency in microseconds.
"""
import http.client
import json
import statistics
import sys
import threading
import time


def main() -> None:
    port, total, conc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    headers = json.loads(sys.argv[4])
    lat = []
    errors = [0]
    lock = threading.Lock()

    def one() -> float:
        t0 = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.request("GET", "/", headers=headers)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                errors[0] += 1
        finally:
            c.close()
        return time.perf_counter() - t0

    for _ in range(min(100, total // 5)):  # warm-up, not recorded
        one()

    def worker(n: int) -> None:
        mine = [one() for _ in range(n)]
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker, args=(total // conc,)) for _ in range(conc)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100)
    print(json.dumps({"p50_us": q[49] * 1e6, "p90_us": q[89] * 1e6, "p99_us": q[98] * 1e6,
                      "requests": len(lat), "errors": errors[0], "rps": len(lat) / elapsed}))


if __name__ == "__main__":
    main()
