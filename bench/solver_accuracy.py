"""Accuracy of every deterministic sampler on every time grid, on the two exact testbeds: RMSE of x_0
against the reference at NFE budgets 5, 8, 10, 15, 20, 50, and the best (method, grid) per budget;
then the stochastic samplers' weak error against NFE on the Gaussian testbed.

    .venv/bin/python bench/solver_accuracy.py [--nfe 5,8,10,15,20,50] [--batch 8] [--schedule linear]

Each run takes the largest N whose NFE fits the budget (F-PNDM and FON cost N + 9, so they have no
entry below NFE 13) and starts from the testbed's exact marginal at its grid's top timestep (one seed
for every run). Closed-form eps models: a minute or two on one CPU thread. The pf method (adaptive)
is listed separately with its tolerance and NFE.
"""

from __future__ import annotations

import math

import click
import torch

from pndm.schedule_spec import SCHEDULE_NAMES
from pndm.schedules import make_schedule
from pndm.solvers import GRIDS, METHODS, make_grid, solve, steps_for_nfe
from pndm.solvers.testbeds import (
    FiniteDataTestbed,
    GaussianTestbed,
    ReferenceCache,
    accuracy_table,
    rmse,
)

FIXED_GRIDS = [g for g, info in GRIDS.items() if info.build is not None]


def _print_table(title: str, refs: ReferenceCache, nfes: list[int]) -> dict:
    methods = [m for m, info in METHODS.items() if not info.adaptive and info.deterministic]
    table = accuracy_table(refs, methods, FIXED_GRIDS, nfes)
    click.echo(f"\n{title}\n")
    click.echo(f"| method | grid | {' | '.join(f'NFE {n}' for n in nfes)} |")
    click.echo("|---|---|" + "---|" * len(nfes))
    best = {n: min(((row[i][1], key) for key, row in table.items() if row[i]), default=None)
            for i, n in enumerate(nfes)}
    for (method, grid), row in table.items():
        cells = []
        for i, cell in enumerate(row):
            if cell is None:
                cells.append("-")
                continue
            text = f"{cell[1]:.2e}" + (f" ({cell[0]})" if cell[0] != nfes[i] else "")
            cells.append(f"**{text}**" if best[nfes[i]][1] == (method, grid) else text)
        click.echo(f"| {method} | {grid} | {' | '.join(cells)} |")
    click.echo("\nbest per NFE: " + "; ".join(f"{n}: {b[1][0]} on {b[1][1]} ({b[0]:.2e})"
                                               for n, b in best.items()))
    t_top = float(refs.testbed.schedule.T - 1)
    x, ref = refs(t_top)
    for tol in (1e-3, 1e-5):
        run = solve(refs.testbed.eps, x, "pf", 2, refs.testbed.schedule, tol=tol, grid="linspace")
        click.echo(f"pf (from t={t_top:g}) tol={tol:.0e}: NFE {run.nfe}, RMSE {rmse(run.x0, ref):.2e}")
    return table


def _recommend(tables: list[dict], nfes: list[int]) -> None:
    """The (method, grid) with the smallest geometric-mean RMSE over the testbeds, per budget."""
    click.echo("\nRecommended (geometric mean of the testbeds' RMSE):\n")
    click.echo("| NFE | method | grid | RMSE Gaussian | RMSE finite |")
    click.echo("|---|---|---|---|---|")
    for i, n in enumerate(nfes):
        scores = {key: math.exp(sum(math.log(t[key][i][1]) for t in tables) / len(tables))
                  for key in tables[0] if all(t[key][i] for t in tables)}
        key = min(scores, key=scores.get)
        errs = " | ".join(f"{t[key][i][1]:.2e}" for t in tables)
        click.echo(f"| {n} | {key[0]} | {key[1]} | {errs} |")


def _print_weak_errors(schedule, nfes: list[int], samples: int) -> None:
    """Stochastic samplers on the Gaussian testbed: weak error = RMS over dimensions of the sample
    std's error (the mean's error is at the Monte-Carlo level, s/sqrt(n), for all of them)."""
    tb = GaussianTestbed.random(schedule, shape=(2, 4, 4))
    floor = float(tb.s.mean()) / math.sqrt(2 * samples)
    click.echo(f"\nStochastic samplers, Gaussian 2x4x4, {samples} samples: RMS error of the per-dimension "
               f"sample std (Monte-Carlo level ~{floor:.1e}) | mean's RMS error\n")
    click.echo(f"| method | grid | {' | '.join(f'NFE {n}' for n in nfes)} |")
    click.echo("|---|---|" + "---|" * len(nfes))
    for method, grid in (("ddpm", "quad"), ("ddpm", "leading"), ("edm-sde", "karras"), ("edm-sde", "quad"),
                         ("sde2", "karras"), ("sde2", "quad")):
        cells = []
        for budget in nfes:
            steps = steps_for_nfe(method, budget)
            g = torch.Generator().manual_seed(1)
            x = tb.prior(samples, float(make_grid(grid, steps, schedule)[0]), g)
            run = solve(tb.eps, x, method, steps, schedule, generator=g, grid=grid)
            x0 = run.x0.flatten(1)
            std_err = float(((x0.std(0) - tb.s.flatten()) ** 2).mean().sqrt())
            mean_err = float(((x0.mean(0) - tb.mu.flatten()) ** 2).mean().sqrt())
            cells.append(f"{std_err:.2e} / {mean_err:.1e}" + (f" ({run.nfe})" if run.nfe != budget else ""))
        click.echo(f"| {method} | {grid} | {' | '.join(cells)} |")


@click.command()
@click.option("--nfe", default="5,8,10,15,20,50", show_default=True, help="Comma-separated NFE budgets.")
@click.option("--batch", default=8, show_default=True, help="Samples per testbed and start point.")
@click.option("--schedule", "schedule_name", default="linear", show_default=True,
              type=click.Choice(SCHEDULE_NAMES), help="Noise schedule (T=1000).")
@click.option("--threads", default=1, show_default=True, help="torch CPU threads (1 is fastest here).")
@click.option("--sde-samples", default=4000, show_default=True, help="Samples per stochastic run.")
def main(nfe: str, batch: int, schedule_name: str, threads: int, sde_samples: int) -> None:
    """Print RMSE tables for every deterministic method x grid at each NFE budget."""
    torch.set_num_threads(threads)
    nfes = [int(s) for s in nfe.split(",")]
    schedule = make_schedule(schedule_name, 1000)
    gaussian = "Gaussian x0 ~ N(mu, s^2), mu in [-0.5, 0.5], s in [0.3, 0.7], 3x8x8, exact PF-ODE endpoint"
    t1 = _print_table(gaussian, ReferenceCache(GaussianTestbed.random(schedule), batch), nfes)
    finite = "Finite dataset (8 points in [-1,1]^16, spread 0.2), ideal denoiser, reference dopri5 tol 1e-10"
    t2 = _print_table(finite, ReferenceCache(FiniteDataTestbed.random(schedule), batch), nfes)
    _recommend([t1, t2], nfes)
    _print_weak_errors(schedule, [10, 20, 50, 100], sde_samples)


if __name__ == "__main__":
    main()
