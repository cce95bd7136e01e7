# The plots of benchmarks.md, from the peers' results: argv[1] is their JSON (name, lat, counts
# per peer), argv[2] the folder the PNGs go to.
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
runs = json.load(open(sys.argv[1]))
fig, ax = plt.subplots(figsize=(9, 5))
for r in runs:
    lat = sorted(r["lat"])
    n = len(lat)
    if n:
        ax.plot(lat, [(i + 1) / n for i in range(n)], label=r["name"])
ax.set_xscale("log"); ax.set_xlabel("latency (ms, from when the request was due)"); ax.set_ylabel("fraction of requests")
ax.set_title("Latency CDF under skew (open loop)"); ax.grid(True, which="both", alpha=0.3); ax.legend(fontsize=8)
fig.tight_layout(); fig.savefig(sys.argv[2] + "/bench-latency-cdf.png", dpi=110)
fig, ax = plt.subplots(figsize=(9, 5))
w = 0.8 / max(1, len(runs[0]["counts"]))
for i, r in enumerate(runs):
    total = sum(r["counts"]) or 1
    for j, c in enumerate(r["counts"]):
        ax.bar(i + j * w, c / total, w, color="C%d" % j)
ax.set_xticks([i + 0.4 - w / 2 for i in range(len(runs))]); ax.set_xticklabels([r["name"] for r in runs], rotation=30, ha="right", fontsize=8)
ax.axhline(1 / len(runs[0]["counts"]), color="k", lw=0.8, ls="--"); ax.set_ylabel("share of connections per worker")
ax.set_title("Per-worker distribution (new connections, 16 clients)")
fig.tight_layout(); fig.savefig(sys.argv[2] + "/bench-distribution.png", dpi=110)
