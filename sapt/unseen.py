"""`--unseen`: tasks of the benchmark that a run never trains on, scored on the base model before stage 1
and after every stage through the method's evaluation weights, with no task id (what the paper calls
generalisation to unseen tasks). Written per stage as STAGE/unseen_scores.json and STAGE/unseen/<task>.jsonl
(the predictions with their routing weights), and once as RUN_DIR/unseen_base/, all in the manifest's
evaluated phase, so a resume redoes only what is missing or damaged; metrics.json gets an "unseen" block.

`UnseenScoring` is the part of the stage loop (sapt.train.StageLoop) that does the scoring: it uses the
loop's model, decoding settings, manifest and evaluation cache, and scores through the one evaluation loop
(`sapt.evaluation.tasks.evaluate_tasks`), with no task id.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from sapt.evaluation.tasks import evaluate_tasks
from sapt.methods import Method
from sapt.rundir.results import evaluation_names, prediction_file, unseen_base_dir, write_predictions, write_scores
from sapt.rundir.layout import log

__all__ = ["UnseenScoring"]


class UnseenScoring:
    """The unseen-task scoring of the stage loop (a mixin of sapt.train.StageLoop)."""

    def score_unseen(self, folder: Path, method: Method | None, files: list[str],
                     names: tuple[str, str] = evaluation_names(unseen=True)) -> dict[str, float | None]:
        """Score the unseen tasks through `method`'s evaluation weights with no task id (None: the base model,
        no block), writing `folder`/`predictions`/<task>.jsonl and `scores_file` (main process), `names` being
        (predictions, scores_file) as `evaluation_names` gives them; their names are appended to `files`. A
        method whose weights need the task id (per-task) scores nothing: None."""
        predictions, scores_file = names
        t0 = time.time()
        scores: dict[str, float | None] = {}
        note = None
        if method is not None and method.needs_task_id:
            scores = {task.name: None for task in self.unseen}
            note = f"{method.name} needs a task id, which an unseen task has none of: scored on the base model only"
        else:
            for result in evaluate_tasks(self.model, self.unseen, method, self.decoding, task_ids=False,
                                         cache=self.eval_items):
                name = prediction_file(result.task.name, predictions)
                if self.main:
                    write_predictions(folder, name, result.records)
                files.append(name)
                scores[result.task.name] = result.score
        if self.main:
            summary = {"scores": scores, "seconds": round(time.time() - t0, 2)}
            if note:
                summary["note"] = note
            write_scores(folder, summary, scores_file)
        files.append(scores_file)
        return scores

    def evaluate_unseen_base(self) -> None:
        """The unseen tasks on the base model (no block), once, before stage 1: RUN_DIR/unseen_base/, recorded
        in manifest.json (as a stage named unseen_base, phase evaluated); redone if missing or damaged."""
        folder = unseen_base_dir(self.run_dir)
        done = self.dist.broadcast(self.manifest.problems(folder, "evaluated") == [] if self.main else None)
        if done:
            return
        if self.main:
            self.manifest.forget(folder.name, ("evaluated",))
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self.dist.barrier()
        files: list[str] = []
        scores = self.score_unseen(folder, None, files, evaluation_names())
        if self.main:
            self.manifest.record(folder, "evaluated", files)
            log("sapt: unseen tasks on the base model: " + ", ".join(f"{n} {v:.1f}" for n, v in scores.items()))
        self.dist.barrier()
