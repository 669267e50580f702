"""PNG plots of a simulation report (matplotlib, imported only here)."""

from __future__ import annotations

from pathlib import Path


def plot_report(report: dict, out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policies = report["policies"]
    names = list(policies)
    title = f"{report['trace']} on {report['profile']}"
    paths = [_hit_ratios(plt, report, names, out_dir / "hit_ratio.png", title)]
    paths.append(_ttft_cdf(plt, report, names, out_dir / "ttft_cdf.png", title))
    if any("capacity" in policies[n] for n in names):
        paths.append(_attainment(plt, report, names, out_dir / "attainment.png", title))
    return paths


def _hit_ratios(plt, report: dict, names: list[str], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    local = [report["policies"][n]["hit_ratio"]["local"] for n in names]
    store = [report["policies"][n]["hit_ratio"]["store"] for n in names]
    ax.bar(names, local, label="local (instance cache)")
    ax.bar(names, store, bottom=local, label="store (fetched)")
    served = [report["policies"][n].get("hit_ratio_served", 0.0) for n in names]
    ax.scatter(names, served, marker="D", color="black", zorder=3, label="over the served requests only")
    for value, label, style in ((report["ceilings"]["infinite"], "infinite cache", "--"),
                                (report["ceilings"]["oracle_lru"], "oracle LRU, same capacity", ":")):  # fmt: skip
        ax.axhline(value, color="black", linestyle=style, label=f"{label} ({value:.3f})")
    ax.set_ylabel("token hit ratio")
    return _save(plt, fig, ax, path, title)


def _ttft_cdf(plt, report: dict, names: list[str], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        ttft = report["policies"][name]["ttft_s"]
        qs = [0.5, 0.9, 0.99]
        ax.plot(
            [ttft["p50"], ttft["p90"], ttft["p99"]],
            qs,
            marker="o",
            label=f"{name} (mean {ttft['mean']:.2f}s)",
        )
    ax.axvline(report["policies"][names[0]]["slo"]["ttft_s"], color="red", linestyle="--", label="TTFT SLO")
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (s)")
    ax.set_ylabel("quantile")
    return _save(plt, fig, ax, path, title)


def _attainment(plt, report: dict, names: list[str], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        cap = report["policies"][name].get("capacity")
        if cap:
            sweep = cap["sweep"]
            ax.plot([s["scale"] for s in sweep], [s["attainment"] for s in sweep], marker="o",
                    label=f"{name} (capacity x{cap['effective_scale']:.2f})")  # fmt: skip
    ax.axhline(0.9, color="red", linestyle="--", label="90% target")
    ax.set_xscale("log")
    ax.set_xlabel("arrival-rate scale (x the trace's)")
    ax.set_ylabel("requests within both SLOs")
    return _save(plt, fig, ax, path, title)


def _save(plt, fig, ax, path: Path, title: str) -> Path:
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
