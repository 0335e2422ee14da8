"""Accuracy of every deterministic sampler on the exact testbeds: RMSE against the reference x_0
at N = 10, 20, 50, 100 steps, with the observed order (slope of log error against log N).

    .venv/bin/python bench/solver_accuracy.py [--steps 10,20,50,100] [--batch 8] [--schedule linear]

Closed-form eps models, so it runs in seconds on a CPU. The pf method (adaptive) is listed
separately with its tolerance and NFE.
"""

from __future__ import annotations

import click
import torch

from pndm.schedules import SCHEDULE_NAMES, make_schedule
from pndm.solvers import METHODS, solve, time_grid
from pndm.solvers.testbeds import FiniteDataTestbed, GaussianTestbed, convergence_table, observed_order, rmse


def _print_table(title: str, testbed, steps_list, batch: int) -> None:
    methods = [m for m, info in METHODS.items() if not info.adaptive]
    table = convergence_table(testbed, methods, steps_list, batch=batch)
    click.echo(f"\n{title}")
    head = " | ".join(f"{f'N={n} NFE':>8s}  {'RMSE':8s}" for n in steps_list)
    click.echo(f"| {'method':15s} | {head} | order |")
    click.echo("|" + "-" * 17 + "|" + "|".join("-" * 20 for _ in steps_list) + "|-------|")
    for method, rows in table.items():
        cells = " | ".join(f"{nfe:>8d}  {err:.2e}" for nfe, err in rows)
        order = observed_order(list(steps_list), [err for _, err in rows])
        click.echo(f"| {method:15s} | {cells} | {order:5.2f} |")
    t_top = float(time_grid(steps_list[0], testbed.schedule.T)[0])
    x = testbed.prior(batch, t_top, torch.Generator().manual_seed(0))
    ref = testbed.reference_x0(x, t_top)
    for tol in (1e-3, 1e-5, 1e-7):
        run = solve(testbed.eps, x, "pf", steps_list[0], testbed.schedule, tol=tol)
        click.echo(f"pf (from t={t_top:g}) tol={tol:.0e}: NFE {run.nfe}, RMSE {rmse(run.x0, ref):.2e}")


@click.command()
@click.option("--steps", default="10,20,50,100", show_default=True, help="Comma-separated step counts N.")
@click.option("--batch", default=8, show_default=True, help="Samples per testbed and N.")
@click.option("--schedule", "schedule_name", default="linear", show_default=True,
              type=click.Choice(SCHEDULE_NAMES), help="Noise schedule (T=1000).")
@click.option("--threads", default=1, show_default=True, help="torch CPU threads (1 is fastest here).")
def main(steps: str, batch: int, schedule_name: str, threads: int) -> None:
    """Print RMSE-vs-N tables with observed orders for every deterministic sampler."""
    torch.set_num_threads(threads)
    steps_list = [int(s) for s in steps.split(",")]
    schedule = make_schedule(schedule_name, 1000)
    gaussian = "Gaussian x0 ~ N(mu, s^2), mu in [-0.5, 0.5], s in [0.3, 0.7], 3x8x8, exact PF-ODE endpoint"
    _print_table(gaussian, GaussianTestbed.random(schedule), steps_list, batch)
    finite = "Finite dataset (8 points in [-1,1]^16, spread 0.2), ideal denoiser, reference dopri5 tol 1e-10"
    _print_table(finite, FiniteDataTestbed.random(schedule), steps_list, batch)


if __name__ == "__main__":
    main()
