"""``python -m bench [--quick] [--sections log,machine,...]``: run the benchmarks
(all sections by default), print ratios, save JSON."""
from __future__ import annotations

import argparse

from bench import gateway_bench, hyper_bench, log_bench, machine_bench, sync_bench
from bench.common import Report

SECTIONS = {"log": log_bench, "machine": machine_bench, "sync": sync_bench, "hyper": hyper_bench,
            "gateway": gateway_bench}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated, of: %s" % ", ".join(SECTIONS))
    args = parser.parse_args()
    chosen = args.sections.split(",")
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error("unknown section(s): %s" % ", ".join(sorted(unknown)))
    report = Report()
    for name in chosen:
        SECTIONS[name].run(report, args.quick)
    every = set(chosen) == set(SECTIONS)
    path = report.save("latest.json" if every else "latest-%s.json" % "-".join(chosen))
    print("\nresults saved to %s" % path)
    if not args.quick and every:
        from bench import chart
        print("chart written to %s" % chart.write(
            report.rows, "coremachine_embedded vs the alternatives (ratio; > 1x is better)"))


if __name__ == "__main__":
    main()
