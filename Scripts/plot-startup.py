#!/usr/bin/python3
"""Draws docs/startup.png from `catalyzer bench startup --json` output (Debian's python3-matplotlib,
installed by Scripts/bootstrap.sh; hence /usr/bin/python3).

Usage: Scripts/plot-startup.py HELLO.json HEAVY.json [-o docs/startup.png]

Each input is the JSON document of one `bench startup --function F --json` run. The picture has
one group of bars per function: the p50 of every mode the run measured (cold start, each restore
mode, sfork once the benchmark has it) and the references from the same run (host python under
chroot, gVisor's runsc), with a whisker up to the p99, on a log-scale time axis.
"""

import argparse
import json
import sys

# The order bars appear in; modes a run did not measure are skipped, unknown ones go last.
ORDER = [
    "cold-start",
    "restore-cold",
    "restore-cold-other-request",
    "restore-cold-prefetch",
    "restore-warm",
    "sfork",
    "host-python",
    "runsc",
]
LABELS = {
    "cold-start": "cold start",
    "restore-cold": "restore, cold cache",
    "restore-cold-other-request": "restore, cold, other request",
    "restore-cold-prefetch": "restore, cold + chunk prefetch",
    "restore-warm": "restore, warm cache",
    "sfork": "sfork",
    "host-python": "reference: host python (chroot)",
    "runsc": "reference: runsc (to exit)",
}
REFERENCES = {"host-python", "runsc"}


def load(path):
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as error:
        sys.exit(f"plot-startup: cannot read {path}: {error}")
    if not isinstance(document, dict) or "function" not in document or not isinstance(document.get("modes"), list):
        sys.exit(f"plot-startup: {path} is not `catalyzer bench startup --json` output (no function or modes)")
    for mode in document["modes"]:
        if not all(isinstance(mode.get(key), (int, float)) and mode[key] > 0 for key in ("medianMillis", "p99Millis")):
            sys.exit(f"plot-startup: {path}: mode {mode.get('mode')!r} has no positive medianMillis and p99Millis")
    return document


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="bench startup --json documents, one per function")
    parser.add_argument("-o", "--output", default="docs/startup.png")
    arguments = parser.parse_args()
    documents = [load(path) for path in arguments.inputs]

    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    modes = sorted({mode["mode"] for document in documents for mode in document["modes"]},
                   key=lambda name: ORDER.index(name) if name in ORDER else len(ORDER))
    width = 0.8 / len(modes)
    figure, axes = plt.subplots(figsize=(11, 6))
    colours = plt.get_cmap("tab10")
    for index, name in enumerate(modes):
        xs, p50s, whiskers = [], [], []
        for position, document in enumerate(documents):
            found = next((mode for mode in document["modes"] if mode["mode"] == name), None)
            if found is None:
                continue
            xs.append(position - 0.4 + width * (index + 0.5))
            p50s.append(found["medianMillis"])
            whiskers.append(max(found["p99Millis"] - found["medianMillis"], 0))
        bars = axes.bar(xs, p50s, width * 0.9, label=LABELS.get(name, name), color=colours(index % 10),
                        hatch="//" if name in REFERENCES else None, edgecolor="black", linewidth=0.4,
                        yerr=[[0] * len(whiskers), whiskers], capsize=2, error_kw={"linewidth": 0.8})
        for bar, value in zip(bars, p50s):
            text = f"{value:.0f}" if value >= 10 else f"{value:.1f}"
            axes.annotate(text, (bar.get_x() + bar.get_width() / 2, value), xytext=(0, 2),
                          textcoords="offset points", ha="center", va="bottom", fontsize=7)
    axes.set_yscale("log")
    axes.set_ylabel("time to first response, ms (log scale; bar p50, whisker p99)")
    axes.set_xticks(range(len(documents)))
    axes.set_xticklabels([f"{document['function']} ({document.get('runs', '?')} runs)" for document in documents])
    axes.set_title("Catalyzer start-up: restore from an image against cold start and references, one run each")
    axes.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    axes.grid(axis="y", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(arguments.output, dpi=120)
    print(f"plot-startup: wrote {arguments.output}")


if __name__ == "__main__":
    main()
