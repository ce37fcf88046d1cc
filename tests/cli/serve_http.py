"""mpx serve over real HTTP: the transport's limits and timeouts, rollback with no failed request, the admin
token, and SIGTERM under load. Standard library only. Usage: serve_http.py MPX RUN_DIR WORK_DIR"""
import http.client, json, os, re, signal, socket, subprocess, sys, threading, time

MPX, RUN, WORK = sys.argv[1:4]
TOKEN = "serve-test-token-0123456789"


def start(*args):
    """Starts mpx serve on a free port; returns (process, port) once it listens."""
    p = subprocess.Popen([MPX, "serve", RUN, "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert m, f"no address in the first line: {line!r} {p.stderr.read() if p.poll() is not None else ''}"
    return p, int(m.group(1))


def request(port, method, path, body=None, headers=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data, r


def infer_body(rid, value=7):
    return json.dumps({"id": rid, "inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                                              "data": [value] * 784}]})


def error_of(data):
    j = json.loads(data)
    assert isinstance(j.get("error"), str) and j["error"], data
    return j["error"]


def transport_limits():
    p, port = start("--max-body-bytes", "100000", "--read-timeout-s", "1")
    try:
        status, data, _ = request(port, "POST", "/v2/models/cnn/infer", body=b"x" * 200000)
        assert status == 413 and "max-body-bytes" in error_of(data), (status, data)
        status, data, _ = request(port, "GET", "/no/such/route")
        assert status == 404 and "no route" in error_of(data), (status, data)
        status, data, _ = request(port, "POST", "/v2/models/other/infer", body=infer_body("a"))
        assert status == 404 and "unknown model" in error_of(data)
        status, data, _ = request(port, "POST", "/v2/models/cnn/infer", body="{oops")
        assert status == 400 and "not valid JSON" in error_of(data)
        # Slow and half-open clients: a request cut off mid-headers, one whose body never comes, a silent one.
        slow = []
        for partial in (b"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: x\r\n",
                        b"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"in", b""):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(partial)
            slow.append(s)
        t0 = time.time()
        for i in range(50):
            status, data, _ = request(port, "POST", "/v2/models/cnn/infer", body=infer_body(f"while-slow-{i}"))
            assert status == 200, (status, data)
        assert time.time() - t0 < 5, "the slow clients held up the others"
        for s in slow:  # each is closed by the server after --read-timeout-s
            s.settimeout(5)
            t = time.time()
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            assert time.time() - t < 4, "a slow connection was not closed"
            s.close()
        status, _, _ = request(port, "GET", "/v2/health/ready")
        assert status == 200
    finally:
        p.terminate()
        p.wait(timeout=30)
    print("transport limits: 413, 404, 400 with JSON errors; slow clients closed, others served")


def rollback_under_load():
    token_file = os.path.join(WORK, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    p, port = start("--canary-precision", "bf16", "--canary-share", "0.5", "--inject-nonfinite-canary", "0",
                    "--slo", "nonfinite=0", "--slo-window", "1s", "--rollback-after", "2",
                    "--admin-token-file", token_file)
    results, stop = [], threading.Event()

    def client(k):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = 0
        while not stop.is_set():
            c.request("POST", "/v2/models/cnn/infer", body=infer_body(f"{k}-{i}"))
            r = c.getresponse()
            body = json.loads(r.read())
            finite = r.status == 200 and all(v == v and abs(v) != float("inf") for v in body["outputs"][0]["data"])
            results.append((r.status, finite, body.get("parameters", {}).get("variant")))
            i += 1
        c.close()

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    events = []
    while time.time() - t0 < 6:
        line = p.stdout.readline()
        events.append(json.loads(line))
        if events[-1]["type"] == "rollback":
            break
    rolled_back_after = time.time() - t0
    time.sleep(0.5)
    after_rollback = len(results)
    time.sleep(0.2)
    assert all(v == "fp32" for _, _, v in results[after_rollback:]), "requests still reached the canary"
    # Switches by hand while the clients keep sending: the admin endpoint refuses without the token, and
    # no request fails during a switch.
    auth = {"Authorization": "Bearer " + TOKEN}
    status, data, _ = request(port, "POST", "/admin/precision", body='{"action": "set", "precision": "bf16"}')
    assert status == 401, status
    # (bf16 stays out: the drill made its outputs NaN for good.)
    switches = ['{"action": "set", "precision": "fp16"}', '{"action": "canary", "precision": "16-mixed", "share": 0.5}',
                '{"action": "promote"}', '{"action": "canary", "precision": "fp32", "share": 0.3}', '{"action": "rollback"}']
    for body in switches:
        status, data, _ = request(port, "POST", "/admin/precision", body=body, headers=auth)
        assert status == 200, (body, status, data)
        time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    try:
        assert events and events[-1]["type"] == "rollback", events
        assert rolled_back_after < 2.9, f"rollback took {rolled_back_after:.1f} s with 1 s windows"
        assert "non-finite" in events[-1]["reason"], events[-1]
        assert all(s == 200 and f for s, f, _ in results), [r for r in results if r[0] != 200 or not r[1]][:5]
        seen = {v for _, _, v in results[after_rollback:]}
        assert {"fp16", "16-mixed", "fp32"} <= seen, seen  # the switches took effect under load
        assert results[-1][2] == "fp32"
        status, data, _ = request(port, "GET", "/metrics")
        text = data.decode()
        assert 'mpx_serve_rollbacks_total{from="bf16",to="fp32"} 1' in text
        assert 'mpx_serve_fp32_fallbacks_total{variant="bf16"}' in text
        status, data, _ = request(port, "GET", "/admin/precision", headers=auth)
        assert json.loads(data)["state"] == "rolled_back", data
    finally:
        p.terminate()
        p.wait(timeout=30)
    print(f"rollback: after {rolled_back_after:.2f} s (1 s windows, 2 breached); {len(switches)} switches by hand under "
          f"load; {len(results)} requests, none failed")


def sigterm_under_load():
    p, port = start("--max-queue-delay-us", "2000")
    outcomes, stop = [], threading.Event()

    def client(k):
        i = 0
        while not stop.is_set():
            try:  # a new connection per request: a refused connection was never accepted
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                outcomes.append("refused")
                time.sleep(0.01)
                continue
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.sock = s
                c.request("POST", "/v2/models/cnn/infer", body=infer_body(f"t{k}-{i}"), headers={"Connection": "close"})
                r = c.getresponse()
                body = r.read()
                outcomes.append(r.status if r.status != 200 or json.loads(body)["outputs"] else "empty")
            except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
                outcomes.append("reset")
            finally:
                s.close()
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    stop.set()
    for t in threads:
        t.join()
    assert p.returncode == 0, (p.returncode, err)
    answered = int(re.search(r"stopped after answering (\d+) requests", out).group(1))
    got = sum(1 for o in outcomes if o in (200, 503))
    assert all(o in (200, 503, "refused", "reset") for o in outcomes), set(map(str, outcomes))
    # Every request the server read was answered to its client: none accepted and lost.
    assert got == answered, f"the server answered {answered} requests, clients received {got}"
    assert outcomes.count(200) > 100
    print(f"SIGTERM: {outcomes.count(200)} answered 200, {outcomes.count(503)} refused 503 while draining, "
          f"{outcomes.count('refused') + outcomes.count('reset')} never accepted; server answered {answered}, clients got {got}")


transport_limits()
rollback_under_load()
sigterm_under_load()
