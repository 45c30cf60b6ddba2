"""What a tier process's HTTP client costs as the calls in flight grow: one httpx client shared by
every thread (what the fleet does), one client per thread, and the fleet's own adapter path.

Threads in one process each make model calls to the mock provider (its own process, over real
HTTP, ``--latency-ms`` per answer) for ``--seconds``. For each variant and each thread count it
prints calls per second, the share of Little's ceiling (threads / latency), and CPU milliseconds of
this process per call (the client's own cost: the mock runs apart). httpx 0.28's pool spends CPU
that grows with its open connections (encode/httpx#3215); this measures how much of a tier's cost at
c200 that is, before choosing a fix (issue: half the CPU per job).

Variants:
  shared      one httpx.Client (the fleet's make_http_client) for every thread
  per_thread  one httpx.Client per thread (same settings)
  adapter     the fleet's OpenAI adapter on the shared client (payload, parse, usage, quota)

With ``--async``, coroutines on one event loop instead of threads (what the asyncio pool's calls are):
  async_httpx     one httpx.AsyncClient per coroutine
  async_shared    one httpx.AsyncClient for every coroutine
  aiohttp         one aiohttp.ClientSession (what fleet/providers/_aio.py uses)

Usage: python bench/httpx_pool.py [--json] [--threads 50,200] [--latency-ms 200] [--seconds 5] [--async]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from _rig import mock_provider

from fleet.providers import ChatRequest, OpenAICompatProvider, make_http_client
from fleet.settings import load_settings

BODY = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "Rename n to count in a.py"}]}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run(threads: int, seconds: float, call_for: Callable[[int], Callable[[], None]]) -> dict[str, float]:
    """``threads`` threads calling until ``seconds`` have passed; calls/s and CPU ms per call."""
    calls = [0] * threads
    errors = [0] * threads
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        call = call_for(i)
        call()  # a warm connection before the clock starts
        start.wait()
        while time.monotonic() < stop_at[0]:
            try:
                call()
                calls[i] += 1
            except httpx.HTTPError:
                errors[i] += 1

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    stop_at[0] = time.monotonic() + 3600
    start.wait()
    began, cpu0 = time.monotonic(), _cpu_s()
    stop_at[0] = began + seconds
    for t in pool:
        t.join(seconds + 60)
    wall, cpu = time.monotonic() - began, _cpu_s() - cpu0
    done = sum(calls)
    return {
        "calls_per_s": round(done / wall, 1),
        "cpu_ms_per_call": round(cpu * 1000 / done, 3) if done else 0.0,
        "errors": sum(errors),
    }


def _variants(
    mock_url: str, threads: int, settings: Any
) -> tuple[dict[str, Callable[[int], Callable[[], None]]], list[httpx.Client]]:
    """Each variant's call factory (thread index -> call), and the clients to close after."""
    url = f"{mock_url}/v1/chat/completions"
    shared = make_http_client(settings, max_connections=max(threads, 100))
    own = [make_http_client(settings, max_connections=4) for _ in range(threads)]
    adapter = OpenAICompatProvider("openai", f"{mock_url}/v1", None, shared)
    chat = ChatRequest(model="gpt-4.1-mini", prompt="Rename n to count in a.py")

    def post(client: httpx.Client) -> Callable[[], None]:
        return lambda: client.post(url, json=BODY).raise_for_status() and None

    variants: dict[str, Callable[[int], Callable[[], None]]] = {
        "shared": lambda i: post(shared),
        "per_thread": lambda i: post(own[i]),
        "adapter": lambda i: lambda: adapter.complete(chat) and None,
    }
    return variants, [shared, *own]


def _run_async(tasks: int, seconds: float, variant: str, url: str) -> dict[str, float]:
    """``tasks`` coroutines on one loop calling until ``seconds`` have passed."""
    import aiohttp  # a dependency of the fleet's asyncio pool

    async def main() -> dict[str, float]:
        calls, errors = [0], [0]
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        one = httpx.AsyncClient(limits=httpx.Limits(max_connections=tasks))
        own = [httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) for _ in range(tasks)]

        async def call(i: int) -> None:
            if variant == "aiohttp":
                async with session.post(url, json=BODY) as answer:
                    answer.raise_for_status()
                    await answer.read()
                return
            client = one if variant == "async_shared" else own[i]
            (await client.post(url, json=BODY)).raise_for_status()

        go, stop_at = asyncio.Event(), [0.0]

        async def worker(i: int) -> None:
            await call(i)  # a warm connection before the clock starts
            await go.wait()
            while time.monotonic() < stop_at[0]:
                try:
                    await call(i)
                    calls[0] += 1
                except (httpx.HTTPError, aiohttp.ClientError):
                    errors[0] += 1

        workers = [asyncio.create_task(worker(i)) for i in range(tasks)]
        await asyncio.sleep(min(3.0, seconds))
        began, cpu0 = time.monotonic(), _cpu_s()
        stop_at[0] = began + seconds
        go.set()
        await asyncio.gather(*workers)
        wall, cpu = time.monotonic() - began, _cpu_s() - cpu0
        await session.close()
        for client in (one, *own):
            await client.aclose()
        done = calls[0]
        return {
            "calls_per_s": round(done / wall, 1),
            "cpu_ms_per_call": round(cpu * 1000 / done, 3) if done else 0.0,
            "errors": errors[0],
        }

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="50,200", help="comma-separated thread counts")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--async", dest="use_async", action="store_true", help="coroutines, not threads")
    args = parser.parse_args()
    counts = [int(n) for n in args.threads.split(",")]
    settings = load_settings(env={})
    out: dict[str, Any] = {"latency_ms": args.latency_ms, "seconds": args.seconds, "runs": {}}
    with mock_provider(latency_ms=args.latency_ms) as mock_url:
        for threads in counts:
            ceiling = threads / (args.latency_ms / 1000.0)
            if args.use_async:
                runs = {
                    name: _run_async(threads, args.seconds, name, f"{mock_url}/v1/chat/completions")
                    for name in ("async_httpx", "async_shared", "aiohttp")
                }
            else:
                variants, clients = _variants(mock_url, threads, settings)
                runs = {name: _run(threads, args.seconds, call_for) for name, call_for in variants.items()}
                for client in clients:
                    client.close()
            for name, result in runs.items():
                result["of_ceiling"] = round(result["calls_per_s"] / ceiling, 3)
                out["runs"][f"{name}_c{threads}"] = result
                if not args.json:
                    print(f"{name:>12} c{threads:<4} {result}", flush=True)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
