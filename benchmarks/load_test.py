"""Load test of ``guardkit serve``: the real service on loopback, N concurrent clients, a fixed number of
requests (and a wall-clock cap), real models.

    python benchmarks/load_test.py --requests 200 --clients 8 --steps 2 --fr dlib

Reports failures (anything but 200 and 429), 429s, p50 / p95 latency, the server's peak RSS, and its
memory over the first and the last 50 requests (flat = the last 50's mean within 10 % of the first 50's).
Exit code 0 when there were no failures and memory was flat.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "obama_small.jpg"


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident memory of ``pid`` in KiB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--fr", default="dlib")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop sending after this long")
    parser.add_argument("--photo", type=Path, default=PHOTO)
    args = parser.parse_args()

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "guardkit"), "serve", "--port", str(port), "--workers", str(args.workers),
         "--threads", str(args.threads), "--queue-size", str(args.queue_size), "--fr", args.fr],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if server.poll() is not None:
                print(f"the server exited: {server.stderr.read()[-2000:]}", file=sys.stderr)
                return 1
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > 120:
                print("the server did not become healthy within 120 s", file=sys.stderr)
                return 1
            time.sleep(0.5)
        startup = time.monotonic() - started
        photo = args.photo.read_bytes()
        results: list[dict] = []
        lock = threading.Lock()
        counter = iter(range(args.requests))
        deadline = time.monotonic() + args.max_seconds

        def client() -> None:
            with httpx.Client(base_url=base, timeout=600) as http:
                while time.monotonic() < deadline:
                    with lock:
                        index = next(counter, None)
                    if index is None:
                        return
                    t0 = time.monotonic()
                    try:
                        response = http.post("/v1/protect", files={"file": ("photo.jpg", photo, "image/jpeg")},
                                             data={"steps": str(args.steps)})
                        status, ok = response.status_code, response.status_code == 200 and response.content[:4] == b"\x89PNG"
                        if status == 429:
                            time.sleep(min(float(response.headers.get("retry-after", "1")), 5))
                    except httpx.HTTPError as exc:
                        status, ok = repr(exc), False
                    seconds = time.monotonic() - t0
                    with lock:
                        results.append({"index": index, "status": status, "ok": ok, "seconds": seconds,
                                        "rss_kib": rss_kib(server.pid)[0]})

        t_start = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t_start
        _, peak = rss_kib(server.pid)
    finally:
        server.terminate()
        server.wait(30)

    results.sort(key=lambda r: r["index"])
    done = [r for r in results if r["ok"]]
    busy = [r for r in results if r["status"] == 429]
    failed = [r for r in results if not r["ok"] and r["status"] != 429]
    latencies = sorted(r["seconds"] for r in done)
    first, last = results[:50], results[-50:]
    first_mib = statistics.mean(r["rss_kib"] for r in first) / 1024 if first else float("nan")
    last_mib = statistics.mean(r["rss_kib"] for r in last) / 1024 if last else float("nan")
    report = {
        "requests": len(results), "ok": len(done), "status_429": len(busy), "failures": len(failed),
        "failure_statuses": sorted({str(r["status"]) for r in failed}),
        "clients": args.clients, "workers": args.workers, "threads": args.threads, "steps": args.steps,
        "fr": args.fr, "startup_s": round(startup, 1), "wall_s": round(wall, 1),
        "throughput_per_s": round(len(done) / wall, 2) if wall else None,
        "p50_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "p95_s": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))], 2) if latencies else None,
        "peak_rss_mib": round(peak / 1024), "rss_first50_mib": round(first_mib), "rss_last50_mib": round(last_mib),
        "memory_flat": last_mib <= first_mib * 1.10, "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    return 0 if not failed and report["memory_flat"] and len(results) == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
