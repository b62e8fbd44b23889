"""What the code sandbox costs per execution: the old Python-only sandbox (its source read from git at run time),
the named weaker mode, and the bubblewrap jail in both verdict forms, side by side in one run.

    python eval/sandbox_cost.py            # writes eval/results/sandbox_cost.{json,png}

Two programs: a trivial one (`pass`) and a HumanEval-sized one (HumanEval/0's prompt, canonical solution and
tests). Each round runs every variant on both programs, in an order rotated from round to round, so drift in
machine load and after-effects of one call hit all alike; the figure reported is the median over rounds, in
milliseconds of wall clock per `run_code` call (quartiles in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

from textdiff.rl.rewards import humaneval_dataset, humaneval_program, humaneval_tests
from textdiff.rl.sandbox import run_code

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
OLD_REV = "471166450233615401b446d83f3beaa2fdaf38d4"  # the last commit with the Python-only sandbox (issue 13)


def load_old_sandbox(rev: str) -> types.ModuleType:
    """textdiff/rl/sandbox.py as of `rev`, as a module (it imports the standard library only)."""
    source = subprocess.run(["git", "show", f"{rev}:textdiff/rl/sandbox.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("textdiff_old_sandbox")
    sys.modules[module.__name__] = module  # its dataclasses look their module up
    exec(compile(source, f"{rev[:7]}:textdiff/rl/sandbox.py", "exec"), module.__dict__)
    return module


def humaneval_forms(problem: dict):
    """The problem as one program (tests inside, as HumanEval runs it), and as candidate + tests for the judge."""
    prompt, test, entry = problem["prompt"], problem["test"], problem["entry_point"]
    whole = humaneval_program(prompt, problem["canonical_solution"], test, entry)
    return whole, f"{prompt}{problem['canonical_solution']}\n", humaneval_tests(prompt, test, entry)


def variants(old: types.ModuleType, problem: dict) -> dict:
    """name -> {program name -> a zero-argument call that runs it once and returns the result}."""
    whole, candidate, tests = humaneval_forms(problem)
    return {
        "old: python -I + audit hook": {
            "trivial": lambda: old.run_code("pass"), "humaneval": lambda: old.run_code(whole)},
        "new, audit-hook-only (named; program form)": {
            "trivial": lambda: run_code("pass", isolation="audit-hook-only"),
            "humaneval": lambda: run_code(whole, isolation="audit-hook-only")},
        "new, jail (program form)": {
            "trivial": lambda: run_code("pass"), "humaneval": lambda: run_code(whole)},
        "new, jail + judge jail (tests form)": {
            "trivial": lambda: run_code("def f():\n    pass\n", tests=_TRIVIAL_TESTS),
            "humaneval": lambda: run_code(candidate, tests=tests)},
    }


_TRIVIAL_TESTS = humaneval_tests("", "def check(candidate):\n    candidate()\n", "f")


def run(args: argparse.Namespace) -> dict:
    problem = humaneval_dataset(limit=1)[0]
    table = variants(load_old_sandbox(args.old_rev), problem)
    times: dict[str, dict[str, list[float]]] = {v: {p: [] for p in progs} for v, progs in table.items()}
    calls = [(name, program, call) for name, programs in table.items() for program, call in programs.items()]
    for round_idx in range(args.warmup + args.rounds):
        # rotate the order each round: whatever one call leaves behind (e.g. the kernel tearing down a jail's
        # network namespace) then falls on every variant alike
        shift = round_idx % len(calls)
        for name, program, call in calls[shift:] + calls[:shift]:
                start = time.perf_counter()
                result = call()
                elapsed = time.perf_counter() - start
                if not result.passed:
                    raise RuntimeError(f"{name} / {program} did not pass: {result}")
                if round_idx >= args.warmup:
                    times[name][program].append(elapsed * 1000)
        print(f"round {round_idx + 1}/{args.warmup + args.rounds}", file=sys.stderr)
    rows = {
        name: {program: {"median_ms": statistics.median(ts), "quartiles_ms": statistics.quantiles(ts, n=4), "ms": ts}
               for program, ts in programs.items()}
        for name, programs in times.items()
    }
    base = rows["old: python -I + audit hook"]
    for row in rows.values():
        for program, cell in row.items():
            cell["vs_old"] = cell["median_ms"] / base[program]["median_ms"]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpus(),
                    "loadavg_at_end": load},
        "old_rev": args.old_rev,
        "problem": problem["task_id"],
        "rounds": args.rounds,
        "isolation": {name: programs["humaneval"]().isolation for name, programs in table.items()},
        "results": rows,
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    programs = ["trivial", "humaneval"]
    colors = ["tab:gray", "tab:olive", "tab:blue", "tab:purple"]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [report["results"][name][p]["median_ms"] for p in programs]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(programs))]
        ax.bar(xs, values, width, label=name, color=colors[i % len(colors)])
        for x, v, p in zip(xs, values, programs):
            ax.text(x, v, f"{v:.0f}\n({report['results'][name][p]['vs_old']:.1f}x)", ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(range(len(programs)), ["trivial program (`pass`)", f"HumanEval-sized ({report['problem']})"])
    ax.set_ylabel("ms per run_code call (median)")
    ax.set_ylim(0, 1.3 * max(report["results"][n][p]["median_ms"] for n in names for p in programs))
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"sandbox cost per execution, {report['rounds']} interleaved rounds, "
                 f"{report['machine']['cpus']} CPUs (load {'/'.join(report['machine']['loadavg_at_end'])})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old-rev", default=OLD_REV, help="git revision whose textdiff/rl/sandbox.py is the baseline")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--out", default=str(RESULTS / "sandbox_cost"))
    args = p.parse_args()
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(report, out.with_suffix(".png"))
    for name, row in report["results"].items():
        cells = "  ".join(f"{p} {c['median_ms']:7.1f} ms ({c['vs_old']:.2f}x)" for p, c in row.items())
        print(f"{name:<44} {cells}")


if __name__ == "__main__":
    main()
