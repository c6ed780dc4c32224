"""Runs the Autobahn TestSuite cases (via kosoku) against a WebSocket echo URL.

Usage: autobahn.py ws://HOST:PORT/echo [--cases GLOB ...] [--exclude GLOB ...]
                   [--concurrency N] [--timeout SECONDS] [--summary FILE]
Prints the counts per verdict and every case that is not OK. Exits 1 if any case FAILED, could
not be run (ERROR), or was UNIMPLEMENTED (the suite covers permessage-deflate, which we offer).
"""

import argparse
import asyncio
import json
import os
import sys
from collections import Counter

from kosoku import FailureError, run_fuzzingclient

VERDICTS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]


def verdict(result):
    """One label per case: a case whose close went wrong fails even if its messages were right."""
    if not result.passed:
        return "FAILED" if result.behavior.value in ("OK", "NON-STRICT", "INFORMATIONAL") else result.behavior.value
    return result.behavior.value


def key(case_id):
    return tuple(int(part) for part in case_id.split(".") if part.isdigit())


async def run(args):
    try:
        return await asyncio.wait_for(
            run_fuzzingclient(args.url, args.cases, args.exclude, concurrency=args.concurrency), args.timeout
        )
    except FailureError as failure:
        return failure.results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--cases", action="append")
    parser.add_argument("--exclude", action="append")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--summary", help="write the counts and non-OK cases as JSON here")
    args = parser.parse_args()

    try:
        results = asyncio.run(run(args))
    except asyncio.TimeoutError:
        print(f"autobahn: the suite did not finish within {args.timeout:.0f}s", file=sys.stderr)
        return 1
    results = sorted(results, key=lambda r: key(r.case_id))
    counts = Counter(verdict(r) for r in results)
    others = sorted(set(counts) - set(VERDICTS))
    print(f"autobahn: {len(results)} cases: " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS + others))

    listed = []
    for r in results:
        label = verdict(r)
        if label == "OK":
            continue
        reasons = [r.result]
        if r.behavior_close.value not in ("OK", "INFORMATIONAL"):
            reasons.append(f"close {r.behavior_close.value}: {r.result_close}")
        if not r.was_clean and r.was_not_clean_reason:
            reasons.append(f"not clean: {r.was_not_clean_reason}")
        reasons.append(f"remote close code {r.remote_close_code}")
        print(f"  {label:<13} {r.case_id:<9} {r.description}")
        for reason in reasons:
            print(f"  {'':<13} {'':<9} - {reason}")
        listed.append({"case": r.case_id, "verdict": label, "description": r.description, "reasons": reasons})

    if args.summary:
        with open(args.summary, "w") as f:
            json.dump({"counts": dict(counts), "cases": len(results), "not_ok": listed}, f, indent=1)
    failed = counts["FAILED"] + counts["UNIMPLEMENTED"] + counts.get("ERROR", 0)
    if not results:
        print("autobahn: no case ran", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # kosoku's native runtime has aborted the interpreter during its shutdown (SIGABRT, no
    # message, once in a full run after all 517 verdicts were printed): the verdict is final
    # here, so leave without the teardown rather than let it turn a pass into a failure.
    os._exit(code)
