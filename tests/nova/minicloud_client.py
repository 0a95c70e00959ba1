"""novaclient with --profile, as `nova --profile KEY boot` does, BOOTS boots at once (run by
minicloud.py under bu-osprofiler-run). Prints {server id: trace base id} as JSON."""
import json
import sys
import threading
import time

from keystoneauth1 import session
from keystoneauth1 import token_endpoint
from novaclient import client as nova_client

PORT, BOOTS, IMAGE, KEY = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
URL = "http://127.0.0.1:%d/v2.1" % PORT


def client(profile=None):
    sess = session.Session(auth=token_endpoint.Token(URL, "admin:admin"))
    kwargs = {"profile": profile} if profile else {}
    return nova_client.Client("2.37", session=sess, **kwargs)


def main():
    admin = client()
    flavor = admin.flavors.create("bu.tiny.%d" % int(time.time()), 128, 1, 1)
    results, errors = {}, []

    def boot(i):
        try:
            from osprofiler import profiler

            nova = client(profile=KEY)  # novaclient: profiler.init(KEY) in this thread
            base = profiler.get().get_base_id()
            server = nova.servers.create("mc-%d" % i, IMAGE, flavor.id, nics="none")
            deadline = time.time() + 300
            while time.time() < deadline:
                server = nova.servers.get(server.id)
                if server.status in ("ACTIVE", "ERROR"):
                    break
                time.sleep(1)
            if server.status != "ACTIVE":
                errors.append("%s: %s %s" % (server.name, server.status,
                                             getattr(server, "fault", "")))
            results[server.id] = base
        except Exception as exc:  # reported below
            errors.append("boot %d: %r" % (i, exc))

    threads = [threading.Thread(target=boot, args=(i,)) for i in range(BOOTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    import bu_osprofiler

    bu_osprofiler.flush(5)
    if errors:
        sys.exit("\n".join(errors))
    print(json.dumps(results))


main()
