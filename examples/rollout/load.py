import http.client, json, sys, threading, time
n = int(sys.argv[1]); stop_at = time.time() + float(sys.argv[2])
codes = {}
lock = threading.Lock()
def worker():
    c = http.client.HTTPConnection("127.0.0.1", 18100)
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    while time.time() < stop_at:
        c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = c.getresponse(); r.read()
        with lock: codes[r.status] = codes.get(r.status, 0) + 1
ts = [threading.Thread(target=worker) for _ in range(n)]
[t.start() for t in ts]; [t.join() for t in ts]
print(codes)
