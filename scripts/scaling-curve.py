#!/usr/bin/env python3
"""The scaling curve of the chat (issue 15, item 4): offered send rate -> deliveries/s,
delivery p50 and p99, and the share of the cluster's core that was busy.

  scaling-curve.py run BIN OUT_DIR RATE[,RATE...] [--clients N] [--rooms N] [--seconds S]
      For each rate: a fresh local cluster of BIN (`cluster/up.sh`, pinned to core 1),
      then `BIN bench --json` (pinned to core 0) offering RATE sends/s for about S seconds
      (0: as fast as acks come back). Writes OUT_DIR/rate-RATE.json (the bench report
      plus `core1_busy_percent`, sampled from /proc/stat during the load).
  scaling-curve.py plot OUT_DIR SVG
      Draws the reports of OUT_DIR as a small SVG: deliveries/s and latency against the
      offered rate. Standard library only.

Run from the repository's root, as the user that may start the cluster (see
docs/BENCHMARKS.md, "The scaling curve").
"""
import glob, json, os, subprocess, sys, threading, time


def cpu_ticks(cpu):
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{cpu} "):
                values = [int(v) for v in line.split()[1:]]
                idle = values[3] + values[4]
                return sum(values) - idle, sum(values)
    raise SystemExit(f"no cpu{cpu} in /proc/stat")


def acked_total():
    """The acked-messages counter of node n1, or 0 while it cannot be read."""
    import urllib.request
    try:
        text = urllib.request.urlopen("http://127.0.0.1:7100/metrics", timeout=1).read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("districhat_messages_acked_total "):
            return float(line.split()[1])
    return 0


def run(binary, out_dir, rates, clients, rooms, seconds):
    os.makedirs(out_dir, exist_ok=True)
    env = dict(os.environ, DISTRICHAT_BIN=os.path.abspath(binary))
    for rate in rates:
        subprocess.run(["bash", "cluster/down.sh"], capture_output=True)
        subprocess.run(["rm", "-rf", "data/cluster"], check=True)
        subprocess.run(["taskset", "-c", "1", "bash", "cluster/up.sh"], env=env, check=True, capture_output=True)
        # Messages per client so the load lasts about `seconds` (at least 20 each).
        messages = max(20, rate * seconds // clients) if rate else 40
        bench = subprocess.Popen(
            ["taskset", "-c", "0", binary, "bench", "--json", "--clients", str(clients), "--rooms", str(rooms),
             "--messages", str(messages), "--rate", str(rate)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        busy = []
        sampler_done = threading.Event()

        def sample():
            # Only while messages flow: setup (registrations, logins) is not the load.
            while not sampler_done.is_set() and acked_total() == 0:
                time.sleep(0.2)
            previous = cpu_ticks(1)
            while not sampler_done.wait(1.0):
                now = cpu_ticks(1)
                if now[1] > previous[1]:
                    busy.append(100.0 * (now[0] - previous[0]) / (now[1] - previous[1]))
                previous = now

        sampler = threading.Thread(target=sample)
        sampler.start()
        output, _ = bench.communicate()
        sampler_done.set()
        sampler.join()
        report = json.loads(output)
        # The last second or two are the drain; the median of the seconds is the load's.
        report["core1_busy_percent"] = sorted(busy)[len(busy) // 2] if busy else None
        with open(os.path.join(out_dir, f"rate-{rate}.json"), "w") as out:
            json.dump(report, out, indent=1)
        print(f"rate {rate}: {report['deliveries_per_sec']:.0f} deliveries/s, delivery p50 "
              f"{report['delivery_latency']['p50_ms']:.1f} ms p99 {report['delivery_latency']['p99_ms']:.1f} ms, "
              f"core 1 busy {report['core1_busy_percent']}%", flush=True)
    subprocess.run(["bash", "cluster/down.sh"], capture_output=True)


def plot(out_dir, svg_path):
    reports = []
    for path in glob.glob(os.path.join(out_dir, "rate-*.json")):
        with open(path) as f:
            reports.append(json.load(f))
    # Rate 0 (as fast as acks come) goes last, at the highest acked rate it reached.
    points = sorted(
        ((r["rate"] or r["sends_acked_per_sec"], r) for r in reports), key=lambda p: p[0])
    if not points:
        raise SystemExit(f"no reports in {out_dir}")
    width, height, pad = 720, 300, 50
    panel = (width - 3 * pad) / 2
    max_rate = max(p[0] for p in points) * 1.05
    max_deliveries = max(r["deliveries_per_sec"] for _, r in points) * 1.1
    max_latency = max(r["delivery_latency"]["p99_ms"] for _, r in points) * 1.1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>']

    def axes(x0, title, y_max, y_label):
        y0 = height - pad
        parts.append(f'<text x="{x0 + panel / 2}" y="18" text-anchor="middle" font-size="13">{title}</text>')
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + panel}" y2="{y0}" stroke="black"/>')
        parts.append(f'<line x1="{x0}" y1="{pad - 20}" x2="{x0}" y2="{y0}" stroke="black"/>')
        for i in range(5):
            value = y_max * i / 4
            y = y0 - (height - pad - (pad - 20)) * i / 4
            parts.append(f'<text x="{x0 - 4}" y="{y + 4}" text-anchor="end">{value:,.0f}</text>')
            parts.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + panel}" y2="{y}" stroke="#ddd"/>')
        for i in range(5):
            value = max_rate * i / 4
            x = x0 + panel * i / 4
            parts.append(f'<text x="{x}" y="{y0 + 14}" text-anchor="middle">{value:,.0f}</text>')
        parts.append(f'<text x="{x0 + panel / 2}" y="{height - 12}" text-anchor="middle">offered sends/s</text>')
        parts.append(f'<text x="{x0 - 38}" y="{pad + 60}" transform="rotate(-90 {x0 - 38} {pad + 60})" '
                     f'text-anchor="middle">{y_label}</text>')

    def line(x0, y_max, values, colour, label, label_row):
        y0, span = height - pad, height - pad - (pad - 20)
        coords = [(x0 + panel * rate / max_rate, y0 - span * min(v, y_max) / y_max) for rate, v in values]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in coords:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{x0 + 8}" y="{pad - 20 + 14 * label_row}" fill="{colour}">{label}</text>')

    left, right = pad, 2 * pad + panel
    axes(left, "deliveries/s", max_deliveries, "deliveries/s")
    line(left, max_deliveries, [(rate, r["deliveries_per_sec"]) for rate, r in points], "#1f6fb4", "delivered", 1)
    axes(right, "delivery latency (ms)", max_latency, "ms")
    line(right, max_latency, [(rate, r["delivery_latency"]["p50_ms"]) for rate, r in points], "#2a9d4b", "p50", 1)
    line(right, max_latency, [(rate, r["delivery_latency"]["p99_ms"]) for rate, r in points], "#d1495b", "p99", 2)
    parts.append("</svg>")
    with open(svg_path, "w") as out:
        out.write("\n".join(parts) + "\n")


def main(argv):
    if len(argv) >= 4 and argv[1] == "run":
        options = {"--clients": 1000, "--rooms": 50, "--seconds": 10}
        rest = argv[5:]
        for flag, value in zip(rest[::2], rest[1::2]):
            if flag not in options:
                raise SystemExit(f"unknown flag {flag}")
            options[flag] = int(value)
        rates = [int(r) for r in argv[4].split(",")]
        run(argv[2], argv[3], rates, options["--clients"], options["--rooms"], options["--seconds"])
    elif len(argv) == 4 and argv[1] == "plot":
        plot(argv[2], argv[3])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
