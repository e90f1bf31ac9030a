"""Slow clients against a running `sida serve`: many sockets that send half a request and stall, while normal
requests are timed. `python -m bench.slow_clients --url http://127.0.0.1:8000 --sockets 1000` prints one JSON line.

uvicorn has no header-read timeout, so each stalled socket stays open; the point is that they cost the server
only an idle connection each, and normal requests are still served (behind the deploy proxy they are cut off
by nginx's client_header_timeout instead).
"""

import argparse
import json
import resource
import socket
import time
from urllib.parse import urlparse

import httpx
import numpy as np

from bench.loadtest import check_loopback


def open_slow_sockets(host, port, count):
    """count connections, each with a request line and one header but never the blank line that ends the headers."""
    sockets = []
    for i in range(count):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(f'GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: {i}\r\n'.encode())
        sockets.append(s)
    return sockets


def still_open(sockets):
    """How many of them the server has not closed (a closed one reads b'' or errors)."""
    alive = 0
    for s in sockets:
        s.setblocking(False)
        try:
            alive += s.recv(1) != b''
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def normal_requests(url, count, body=None):
    """count requests on fresh connections while the slow sockets are held: (status codes, seconds each)."""
    codes, seconds = [], []
    for i in range(count):
        t = time.perf_counter()
        with httpx.Client(base_url=url, timeout=30) as client:
            r = client.post('/v1/generate', json={'seed': i, **(body or {})}) if body is not None else client.get('/healthz')
        seconds.append(time.perf_counter() - t)
        codes.append(r.status_code)
    return codes, seconds


def run(url, sockets, requests=20, hold_s=2.0):
    check_loopback(url)
    parsed = urlparse(url)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < sockets + 64:                   # our side needs a descriptor per socket too
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, sockets + 256), hard))
    held = open_slow_sockets(parsed.hostname, parsed.port, sockets)
    try:
        time.sleep(hold_s)
        health_codes, health_s = normal_requests(url, requests)
        generate_codes, generate_s = normal_requests(url, requests, body={})
        alive = still_open(held)
    finally:
        for s in held:
            s.close()
    return {'slow_sockets': sockets, 'still_open': alive, 'held_s': hold_s,
            'healthz': {'codes': sorted(set(health_codes)), 'p50_ms': 1000 * float(np.median(health_s)),
                        'max_ms': 1000 * max(health_s)},
            'generate': {'codes': sorted(set(generate_codes)), 'p50_ms': 1000 * float(np.median(generate_s)),
                         'max_ms': 1000 * max(generate_s)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--url', required=True)
    parser.add_argument('--sockets', type=int, default=1000)
    parser.add_argument('--requests', type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(run(args.url, args.sockets, args.requests)))


if __name__ == '__main__':
    main()
