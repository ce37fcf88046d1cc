"""mpx serve on a trained GPT over real HTTP: Triton's generate extension, answers equal to mpx generate's,
canary and shadow metrics, rollback of a NaN canary with no failed request, SIGTERM. Standard library only.
Usage: serve_gpt.py MPX RUN_DIR"""
import http.client, json, re, signal, subprocess, sys, threading, time

MPX, RUN = sys.argv[1:3]


def start(*args):
    p = subprocess.Popen([MPX, "serve", RUN, "--port", "0", "--name", "tiny", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert m, f"no address in the first line: {line!r} {p.stderr.read() if p.poll() is not None else ''}"
    return p, int(m.group(1))


def post(port, path, body, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", path, body=json.dumps(body) if not isinstance(body, str) else body)
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    return r.status, data


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    data = r.read().decode()
    c.close()
    return r.status, data


def mpx_generate(prompt, tokens, precision, *sampling):
    out = subprocess.run([MPX, "generate", RUN, "--prompt", prompt, "--max-new-tokens", str(tokens), "--precision",
                          precision, *sampling], capture_output=True, text=True, check=True).stdout
    assert out.startswith(prompt), out
    return out[len(prompt):].rstrip("\n")


def same_as_mpx_generate():
    for precision in ("fp32", "bf16"):
        p, port = start("--precision", precision)
        try:
            status, meta = get(port, "/v2/models/tiny")
            meta = json.loads(meta)
            assert meta["parameters"]["architecture"] == "gpt" and meta["parameters"]["context"] == 64, meta
            for sampling, cli in (({"temperature": 0}, ["--temperature", "0"]),
                                  ({"parameters": {"temperature": 0.8, "top_k": 20, "seed": 5}},
                                   ["--temperature", "0.8", "--top-k", "20", "--seed", "5"])):
                status, j = post(port, "/v2/models/tiny/generate", {"text_input": "In the beginning", "max_tokens": 30, **sampling})
                assert status == 200, j
                assert j["variant"] == precision, j
                expected = mpx_generate("In the beginning", 30, precision, *cli)
                assert j["text_output"] == expected, (precision, sampling, j["text_output"], expected)
            status, j = post(port, "/v2/models/tiny/generate", {"text_input": "x" * 60, "max_tokens": 10})
            assert status == 400 and "context of 64" in j["error"], j
            status, j = post(port, "/v2/models/tiny/infer", {"inputs": []})
            assert status == 400 and "/generate" in j["error"], j
        finally:
            p.terminate()
            assert p.wait(timeout=30) == 0
    print("generate: fp32 and bf16 answers equal mpx generate's (greedy and sampled); context and route errors 400")


def canary_shadow_and_rollback():
    p, port = start("--canary-precision", "bf16", "--canary-share", "0.5", "--shadow", "--inject-nonfinite-canary", "20",
                    "--slo", "nonfinite=0", "--slo-window", "1s", "--rollback-after", "2")
    results, stop = [], threading.Event()

    def client(k):
        i = 0
        while not stop.is_set():
            status, j = post(port, "/v2/models/tiny/generate",
                             {"id": f"c{k}-{i}", "text_input": "In the", "max_tokens": 8, "temperature": 0})
            results.append((status, j.get("variant"), j.get("fallback_from"), j.get("text_output")))
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    t0 = time.time()
    for t in threads:
        t.start()
    events = []
    try:
        while time.time() - t0 < 8:
            line = p.stdout.readline()
            if not line.startswith("{"):
                continue  # the start lines
            events.append(json.loads(line))
            if events[-1]["type"] == "rollback":
                break
        took = time.time() - t0
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert events[-1]["type"] == "rollback" and "non-finite" in events[-1]["reason"], events
        assert all(s == 200 for s, _, _, _ in results), [r for r in results if r[0] != 200][:3]
        texts = {t for _, _, _, t in results}
        variants = {(v, f) for _, v, f, _ in results}
        assert ("bf16", None) in variants and ("fp32", "bf16") in variants, variants  # the canary, then its fallbacks
        assert results[-1][1] == "fp32" and results[-1][2] is None
        status, text = get(port, "/metrics")
        compared = float(re.search(r'mpx_serve_shadow_comparisons_total\{variant="bf16"\} (\S+)', text).group(1))
        assert compared >= 8, compared  # the canary's answers before the drill were re-read in FP32
        assert 'mpx_serve_rollbacks_total{from="bf16",to="fp32"} 1' in text
        assert re.search(r'mpx_serve_generated_tokens_total\{variant="fp32"\} \d+', text)
        assert re.search(r'mpx_serve_time_per_output_token_seconds_count\{variant="bf16"\} \d+', text)
    finally:
        stop.set()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, (p.returncode, err)
    answered = int(re.search(r"stopped after answering (\d+) requests", out).group(1))
    assert answered >= len(results), (answered, len(results))
    print(f"canary: {len(results)} generations all 200 ({len(texts)} distinct texts), shadow compared {compared:.0f} "
          f"tokens, NaN canary rolled back after {took:.2f} s (1 s windows); SIGTERM drained, {answered} answered")


def events(response):
    """The server-sent events of a streamed answer, as they arrive."""
    while True:
        line = response.readline()
        if not line:
            return
        if line.startswith(b"data: "):
            yield json.loads(line[6:])


def streaming():
    p, port = start("--precision", "bf16")
    try:
        body = {"text_input": "In the beginning", "max_tokens": 30, "temperature": 0}
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/v2/models/tiny/generate_stream", body=json.dumps(body))
        r = c.getresponse()
        assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream", (r.status, r.getheaders())
        got = list(events(r))
        c.close()
        assert len(got) == 31 and got[-1]["finish_reason"] == "length" and got[-1]["variant"] == "bf16", got[-1]
        text = "".join(e["text_output"] for e in got)
        status, whole = post(port, "/v2/models/tiny/generate", body)
        assert text == whole["text_output"] == mpx_generate("In the beginning", 30, "bf16", "--temperature", "0"), (text, whole)
        # A stop sequence: the answer ends before it, streamed or whole.
        stop = whole["text_output"][10:12]
        status, ended = post(port, "/v2/models/tiny/generate", {**body, "stop": [stop]})
        expected = whole["text_output"][:whole["text_output"].index(stop)]
        assert status == 200 and ended["finish_reason"] == "stop" and ended["text_output"] == expected, (stop, ended)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/v2/models/tiny/generate_stream", body=json.dumps({**body, "stop": stop}))
        got = list(events(c.getresponse()))
        c.close()
        assert "".join(e["text_output"] for e in got) == expected and got[-1]["finish_reason"] == "stop", got
        # A client that reads two tokens and leaves: the server stops that generation and keeps serving.
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/v2/models/tiny/generate_stream", body=json.dumps({**body, "max_tokens": 40}))
        r = c.getresponse()
        stream = events(r)
        next(stream), next(stream)
        c.sock.shutdown(2)
        c.close()
        status, again = post(port, "/v2/models/tiny/generate", body)
        assert status == 200 and again["text_output"] == whole["text_output"], again
        for _ in range(50):
            status, text = get(port, "/metrics")
            if 'status="cancelled"' in text:
                break
            time.sleep(0.1)
        assert re.search(r'mpx_serve_requests_total\{status="cancelled",variant="bf16"\} 1', text), text[:2000]
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/v2/models/tiny/generate_stream", body=json.dumps({**body, "max_tokens": 60}))
        r = c.getresponse()
        assert r.status == 400 and "context of 64" in json.loads(r.read())["error"]
        c.close()
    finally:
        p.terminate()
        assert p.wait(timeout=30) == 0
    print("generate_stream: 30 token events and a last one add up to the whole answer (= mpx generate's); a stop "
          "sequence ends it, streamed or whole; "
          "a client that left after two tokens was counted cancelled; 400 before the stream for a context overflow")


same_as_mpx_generate()
streaming()
canary_shadow_and_rollback()
