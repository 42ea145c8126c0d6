"""How good a model is: everything that answers it, in one place.

    scoring      one answer against its references: exact match, ROUGE-L (`score_example`)
    generation   batched greedy answers and teacher-forced loss (`predict`, `evaluation_loss`), one task
                 scored with its records (`evaluate_task`)
    tasks        `evaluate_tasks`: a list of tasks scored one after the other, the one loop that the stage
                 loop (sapt.train), the unseen-task scoring (sapt.unseen) and `sapt eval` (sapt.cli) share
    metrics      the CL metrics of a score matrix (AP, F.Ra, BWT, FWT) and its text table; pure, no torch
    report       a run's metrics.json and timing.json from its stage files (`write_metrics` -> `Report`),
                 the table printed after each stage, FWT's reference run
    plots        the figures of `sapt report` and `sapt compare`

Files are read and written through sapt.rundir, which owns the run directory; nothing here opens a run file.
The package's `__init__` imports nothing on purpose: the light modules (metrics, scoring) are read by
commands and modules that must not load torch, and sapt.rundir reads `metrics.metrics_problems`.
"""
