"""Time the heuristic router over the labeled set; the last stdout line is one JSON object.

Usage: python bench/router.py [--json] [--repeat N]
Target: median < 100 us and p99 < 1 ms per classification.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from fleet.models import TaskRequest, validate_request
from fleet.router import decide
from fleet.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
LABELED = ROOT / "tests" / "data" / "router" / "coding_train.jsonl"
TARGET_MEDIAN_US = 100
TARGET_P99_US = 1000


def load_requests() -> list[TaskRequest]:
    requests = []
    for line in LABELED.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            data.pop("expected_tier", None)
            data.pop("why", None)
            requests.append(validate_request(data))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--repeat", type=int, default=50, help="passes over the labeled set")
    args = parser.parse_args()

    router = load_settings(config_dir=ROOT, env={}).router.model_copy(update={"classifier": "heuristic"})
    requests = load_requests()
    for request in requests:  # warm-up: compiles the patterns once for these settings
        decide(request, router)

    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(args.repeat):
        for request in requests:
            start = clock()
            decide(request, router)
            samples.append((clock() - start) / 1000)
    samples.sort()
    result = {
        "classifications": len(samples),
        "requests": len(requests),
        "median_us": round(statistics.median(samples), 2),
        "p99_us": round(samples[int(len(samples) * 0.99) - 1], 2),
        "max_us": round(samples[-1], 2),
        "target_median_us": TARGET_MEDIAN_US,
        "target_p99_us": TARGET_P99_US,
    }
    result["ok"] = result["median_us"] < TARGET_MEDIAN_US and result["p99_us"] < TARGET_P99_US
    if not args.json:
        print(f"{len(samples)} classifications: median {result['median_us']} us, p99 {result['p99_us']} us")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
