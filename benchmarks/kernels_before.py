"""The compile report of an older revision's kernels at that revision's own dispatch (before/after
tables in benchmarks/RESULTS.md). Before this change the tiles depended on the head dim only:

    python benchmarks/kernels_before.py [--rev main] [--json FILE]

compiles `git show REV:labkit/kernels/attention.py` with its tiles (128 x 64 up to head dim 64,
64 x 64 up to 128, 64 x 32 above; Triton's default 4 warps and 3 stages; MLA decode 16-64 rows
per program and 64 cache positions, 32 above a latent width of 256) for the same architectures,
head dims and latent widths as `labkit kernels report --quick` (bf16, causal).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from labkit.kernels import report

ROOT = Path(__file__).resolve().parents[1]


def old_jobs(source: str) -> list[report.Job]:
    out = []
    for arch in report.ARCHS:
        for bucket in report.QUICK_WIDTHS:
            dqk, dv = report.WIDTH_CASES[bucket]
            d = max(dqk, 16)
            bm, bn = (128, 64) if d <= 64 else (64, 64) if d <= 128 else (64, 32)
            widths = dict(
                DQK=dqk,
                DV=dv,
                BLOCK_DQK=1 << (dqk - 1).bit_length(),
                BLOCK_DV=1 << (dv - 1).bit_length(),
            )
            for name in ("fwd", "dkdv", "dq"):
                constexprs = dict(CAUSAL=True, BLOCK_M=bm, BLOCK_N=bn, **widths)
                config = f"bf16 d{dqk}/{dv} M{bm} N{bn} w4 s3"
                out.append(
                    report.Job(f"_{name}_kernel", arch, config, constexprs, "bf16", 4, 3, source)
                )
            constexprs = dict(DV=dv, BLOCK_M=bm, BLOCK_DV=widths["BLOCK_DV"])
            out.append(
                report.Job(
                    "_delta_kernel",
                    arch,
                    f"bf16 dv{dv} M{bm} w4 s3",
                    constexprs,
                    "bf16",
                    4,
                    3,
                    source,
                )
            )
        for rank in report.LATENT_WIDTHS:
            bn = 32 if rank > 256 else 64
            constexprs = dict(
                R=rank,
                DR=report.ROPE_WIDTH,
                BLOCK_H=16,
                BLOCK_N=bn,
                BLOCK_R=rank,
                BLOCK_DR=report.ROPE_WIDTH,
            )
            config = f"bf16 r{rank}+{report.ROPE_WIDTH} H16 N{bn} w4 s3"
            out.append(
                report.Job("_mla_decode_kernel", arch, config, constexprs, "bf16", 4, 3, source)
            )
    return out


def compare(before: list[dict], after: list[dict]) -> str:
    """Per kernel and architecture: the before rows against the same scope of the after rows
    (bf16, head dims 64-256, one-token MLA decode), as in the README."""

    def quick(r: dict) -> bool:
        cfg = r["config"]
        if not cfg.startswith("bf16 ") or cfg.startswith("bf16 d32/") or " dv32 " in f" {cfg}":
            return False
        return r["kernel"] != "mla_decode" or " H16 " in cfg

    def groups(rows: list[dict]) -> dict:
        out: dict = {}
        for r in rows:
            out.setdefault((r["kernel"], r["arch"]), []).append(r)
        return out

    def cells(rows: list[dict]) -> str:
        spills = [r["spills"] for r in rows if r["spills"]]
        return (
            f"{sum(r['fits'] for r in rows)} / {len(rows)} | "
            f"{max(r['shared_bytes'] for r in rows) / 1024:.1f} | "
            f"{len(spills)} ({max(spills) if spills else 0})"
        )

    old, new = groups(before), groups([r for r in after if quick(r)])
    lines = [
        "| kernel | arch | limit KiB | before: fit / configs | before: max shared KiB "
        "| before: configs spilling (max B) | now: fit / configs | now: max shared KiB "
        "| now: configs spilling (max B) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, rows in old.items():
        limit = rows[0]["shared_limit_bytes"] // 1024
        lines.append(f"| {key[0]} | {key[1]} | {limit} | {cells(rows)} | {cells(new[key])} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="main")
    parser.add_argument("--json")
    parser.add_argument("--from-json", help="tabulate rows written by an earlier --json run")
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    parser.add_argument("--compare", help="print before vs this `labkit kernels report --json`")
    args = parser.parse_args()
    if args.from_json:
        rows = [report.Row(**r) for r in json.loads(Path(args.from_json).read_text())]
    else:
        text = subprocess.run(
            ["git", "show", f"{args.rev}:labkit/kernels/attention.py"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "attention_before.py"
            source.write_text(text)
            rows = report.run(todo=old_jobs(str(source)))
    if args.compare:
        print(compare([asdict(r) for r in rows], json.loads(Path(args.compare).read_text())))
        return 0
    print(f"{args.rev}: {len(rows)} kernel configurations compiled")
    print(report.summary(rows))
    for r in rows:
        if not r.fits:
            print(f"DOES NOT FIT: {r.kernel} {r.arch} {r.config}: {r.problems}")
    if args.record:
        from labkit.bench.common import record

        command = f"python benchmarks/kernels_before.py --rev {args.rev}"
        record(
            f"labkit kernels report, before: {args.rev}'s kernels at its own tiles",
            report.markdown(rows, command),
        )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
