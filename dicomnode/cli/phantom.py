"""`dicomnode phantom`: synthetic chest CT series with known nodules (truth.json), and their follow-ups."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dicomnode.cli.common import UserError, console
from dicomnode.cli.inference_setup import progress_bar


# -- phantom ---------------------------------------------------------------------------------
def cmd_phantom(args: argparse.Namespace) -> int:
    from inference.phantom import write_phantom_series

    if args.count < 1:
        raise UserError("--count must be 1 or more")
    if args.follow_up_of is not None:
        return _phantom_follow_up(args)
    if args.months is not None:
        raise UserError("--months needs --follow-up-of PRIOR_SEED")
    with progress_bar() as bar:
        task = bar.add_task("writing phantoms", total=args.count)
        for i in range(args.count):
            seed = args.seed + i
            out = args.out if args.count == 1 else args.out / f"phantom-{seed}"
            case = write_phantom_series(out, seed, small=args.small)
            bar.advance(task)
            sizes = ", ".join(f"{n.diameter_mm:.1f} mm" for n in case.phantom.nodules)
            console.print(f"{out}: {len(case.files)} slices, nodules {sizes or 'none'}; truth in {case.truth_path.name}")
    return 0


def _phantom_follow_up(args: argparse.Namespace) -> int:
    from inference.phantom.follow_up import write_follow_up_series

    if args.count != 1:
        raise UserError("--follow-up-of writes one series: --count must be 1")
    if args.months is None or not 0 < args.months <= 60:
        raise UserError("--follow-up-of needs --months M (0 < M <= 60)")
    if args.seed == args.follow_up_of:
        raise UserError("--seed must differ from --follow-up-of (the follow-up's own seed draws its motion and noise)")
    with progress_bar() as bar:
        bar.add_task(f"writing the follow-up of phantom {args.follow_up_of}", total=None)
        case = write_follow_up_series(args.out, args.seed, args.follow_up_of, args.months, small=args.small)
    truth = json.loads(case.truth_path.read_text())
    counts = {s: sum(n["status"] == s for n in truth["nodules"]) for s in ("growing", "stable", "resolved", "new")}
    console.print(f"{args.out}: {len(case.files)} slices, follow-up of phantom {args.follow_up_of} after "
                  f"{truth['interval_days']} days: " + ", ".join(f"{v} {k}" for k, v in counts.items())
                  + f"; truth in {case.truth_path.name}")
    return 0


def add_phantom_command(sub: Any) -> None:
    p = sub.add_parser("phantom", help="write synthetic chest CT series with known nodules (truth.json)")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=1, help="several phantoms go to OUT/phantom-SEED")
    p.add_argument("--small", action="store_true", help="256x256, thick slices: quick to write and analyse")
    p.add_argument("--follow-up-of", type=int, metavar="PRIOR_SEED",
                   help="write the follow-up of phantom PRIOR_SEED (same patient, moved on the table, another field of "
                   "view; nodules grown, stable, resolved and one new; truth.json); pass the prior's --small too")
    p.add_argument("--months", type=float, help="with --follow-up-of: months after the prior")
    p.set_defaults(func=cmd_phantom)
