"""N concurrent clients (threads, each its own requests.Session, so its own
CONNECT tunnel) through the broker at URL, all started at once. With
RETRY=1 a client refused with 429 tries again until it gets through.
Prints JSON: the statuses, the Retry-After values and problem types of
the 429s, and the seconds from the first request to the last answer."""
import json, os, sys, threading, time
import requests

proxy, ca, url, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
retry = os.environ.get("RETRY") == "1"
start_gate = threading.Barrier(n)
lock = threading.Lock()
out = {"statuses": [], "retry_after": [], "types": [], "errors": []}


def client():
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": proxy, "http": proxy}
    s.verify = ca
    start_gate.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            r = s.get(url, timeout=30)
        except Exception as e:  # counted, not raised: the test says what failed
            with lock:
                out["errors"].append(type(e).__name__ + ": " + str(e)[:200])
            return
        with lock:
            out["statuses"].append(r.status_code)
            if r.status_code == 429:
                out["retry_after"].append(r.headers.get("Retry-After"))
                out["types"].append(r.json().get("type"))
        if r.status_code != 429 or not retry:
            return
        time.sleep(0.05)


threads = [threading.Thread(target=client) for _ in range(n)]
t0 = time.monotonic()
for t in threads:
    t.start()
for t in threads:
    t.join()
out["elapsed"] = time.monotonic() - t0
print(json.dumps(out))
