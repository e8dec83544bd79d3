"""``python -m bench [--quick]``: run every benchmark, print ratios, save JSON."""
from __future__ import annotations

import argparse

from bench import gateway_bench, hyper_bench, log_bench, machine_bench, sync_bench
from bench.common import Report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    report = Report()
    log_bench.run(report, args.quick)
    machine_bench.run(report, args.quick)
    sync_bench.run(report, args.quick)
    hyper_bench.run(report, args.quick)
    gateway_bench.run(report, args.quick)
    path = report.save("latest.json")
    print("\nresults saved to %s" % path)
    if not args.quick:
        from bench import chart
        print("chart written to %s" % chart.write(
            report.rows, "coremachine_embedded vs the alternatives (ratio; > 1x is better)"))


if __name__ == "__main__":
    main()
