"""The optimal policy: CP-SAT on the aggregated problem, disaggregated into a plan.

It always computes the greedy plan too and returns whichever is better on the lexicographic objective, so a time
limit can never make it worse than the baseline. The greedy plan is computed on a second thread while CP-SAT
solves: CP-SAT releases the interpreter lock, so on a machine with two cores the baseline costs no wall time
(on one core it costs what it did before it ran alongside). The time limit covers the whole run
(`solver.timing`): CP-SAT gets what aggregation and building its model left of it, less a reserve for the work
after it; when its first stage finds nothing in half its time, it starts again from the greedy plan
(`solver.hint`), waiting for it if need be.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from solver.assemble import Body, Draft, draft, prepare_writing, score, write_body, write_kept_lines_json
from solver.checkpoint import Abandoned, Checkpoint, carry_on
from solver.collector import collector_paused, kept
from solver.cpsat import AggregateSolution, GeometryModel
from solver.decisions import Decisions
from solver.disaggregate import disaggregate
from solver.errors import MigoptError
from solver.hint import greedy_answer
from solver.plan import ObjectiveBreakdown, Plan, PlanPolicy, PlanStatus
from solver.policies.common import finished, no_model_built, rank
from solver.policies.greedy import baseline, empty, written
from solver.problem import Problem, build_problem
from solver.repair import repair_context
from solver.snapshot import ClusterSnapshot
from solver.speculation import Speculation
from solver.timing import PlanClock
from solver.validate import SnapshotReading, plan_problems, read_snapshot

_ROUNDS = 3


@collector_paused
def plan(
    snapshot: ClusterSnapshot, policy: PlanPolicy, *, dump_model: Path | None = None, as_json: bool = False
) -> Plan:
    """The better of the CP-SAT plan and the greedy plan; `dump_model` receives the first solve's model as text;
    `as_json`: the plan will be written as JSON, so the second thread writes what it can of it ahead."""
    if dump_model is not None:
        _check_writable(dump_model)
    clock = PlanClock(policy.time_limit_s)
    with clock.phase("aggregate"):
        problem = build_problem(snapshot, policy)
    if not problem.demands:
        if dump_model is not None:
            raise no_model_built("no pending pod asks for MIG devices")
        return finished(snapshot, written(problem, empty(baseline(problem, clock)), clock), policy, clock)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="migopt-greedy") as second_thread:
        greedy = _Alongside(second_thread, problem, clock, snapshot, as_json)
        solved = _optimal(problem, policy, clock, greedy, dump_model)
        baseline_draft = greedy.draft()
    clock.add("speculate", greedy.speculated_seconds())  # its work is over once the second thread is
    chosen = _unsolved(baseline_draft, clock.elapsed()) if solved is None else _better(solved, baseline_draft)
    kept(problem, greedy, solved, baseline_draft)  # in a one-shot process, not freed as this returns
    return finished(snapshot, written(problem, chosen, clock), policy, clock, greedy.prepared.reading, chosen.checked)


class _Alongside:
    """The greedy baseline, started on the second thread when CP-SAT is about to solve (`start`), so that the two
    overlap; after it, there, what disaggregating and writing the chosen plan will read (`_prepare`); then the
    work on CP-SAT's incumbents (`speculation`). `draft` waits for the baseline and what it prepares, starting
    them first if no solve did; `answer` (CP-SAT's fallback hint) waits only for the baseline."""

    def __init__(
        self, thread: ThreadPoolExecutor, problem: Problem, clock: PlanClock, snapshot: ClusterSnapshot, as_json: bool
    ) -> None:
        self._thread, self._problem, self._clock, self._snapshot = thread, problem, clock, snapshot
        self._as_json = as_json
        self._solved = threading.Event()
        self._work: tuple[Future[Draft], Future[None]] | None = None
        self._answer: AggregateSolution | None = None
        self._speculations: list[Speculation[_Outcome]] = []
        self.prepared = _Prepared()  # what `_prepare` made for the work on incumbents

    def start(self) -> tuple[Future[Draft], Future[None]]:
        if self._work is None:
            greedy = self._thread.submit(baseline, self._problem, self._clock)
            self._work = (greedy, self._thread.submit(self._prepare, greedy))
        return self._work

    def _prepare(self, greedy: Future[Draft]) -> None:
        """What disaggregating any answer reads (the devices of units left as they are, the repairs' candidate
        nodes), then what writing the plan reads (a greedy plan that leaves pods pending suggests the chosen one
        will too: count what explains them), then what the plan's checks read of the snapshot; last, when the plan
        will be written as JSON and the solve goes on, the JSON of the lines that keep their maps."""
        unplaced = greedy.result().objectives.served_pods < len(self._problem.demands)
        with self._clock.phase("prepare"):
            self._problem.kept_offers()
            self._problem.group_of_pod()
            repair_context(self._problem).prime()
            prepare_writing(self._problem, unplaced)
            self.prepared.reading = read_snapshot(self._snapshot)  # the snapshot the checks read, not the scoped one
            if self._as_json:
                with suppress(Abandoned):  # the solve ended first: the lines are written at the end
                    write_kept_lines_json(self._problem, self._while_solving)

    def _while_solving(self) -> None:
        """Abandon work that pays only while the solve goes on (`solve_ended`)."""
        if self._solved.is_set():
            raise Abandoned

    def solve_ended(self) -> None:
        """The solve has returned: the main thread works on its answer (and wants the interpreter lock)."""
        self._solved.set()

    def draft(self) -> Draft:
        greedy, prepared = self.start()
        prepared.result()
        return greedy.result()

    def answer(self) -> AggregateSolution:
        """The greedy plan as a complete answer of the aggregated problem: CP-SAT's fallback hint, made here (on
        the thread that asks, once the greedy plan is made) and only when asked, which a first stage that proves
        its optimum in half its time never does: made ahead on the second thread, it took 0.3–0.6 s there at
        10,000 nodes, where that thread's work outlasted the solve."""
        if self._answer is None:
            self._answer = greedy_answer(self._problem, self.start()[0].result().decisions)
        return self._answer

    def speculation(self) -> Speculation[_Outcome]:
        """Disaggregating and scoring CP-SAT's incumbents on the second thread, after the work started there, and
        writing and checking the plan's body too (`_ahead`). The work holds what it reads, not this object,
        which holds the work: no reference cycle keeps a plan's data alive after it returns."""
        problem, snapshot, prepared = self._problem, self._snapshot, self.prepared

        def work(answer: AggregateSolution, checkpoint: Checkpoint) -> _Outcome:
            return _ahead(problem, snapshot, prepared, answer, checkpoint)

        made = Speculation(self._thread, work)
        self._speculations.append(made)
        return made

    def speculated_seconds(self) -> float:
        return sum(s.seconds for s in self._speculations)


@dataclass
class _Prepared:
    """What `_prepare` makes that the work on incumbents reads: what the plan checks read of the snapshot."""

    reading: SnapshotReading | None = None


def _ahead(
    problem: Problem, snapshot: ClusterSnapshot, prepared: _Prepared, answer: AggregateSolution, checkpoint: Checkpoint
) -> _Outcome:
    """An incumbent's outcome with its plan's body written and checked: all that follows the solve but the header,
    should the solve end on it (and that plan be chosen). Runs after `_prepare`, whose reading the checks take."""
    outcome = _outcome(problem, answer, checkpoint)
    checkpoint()
    body = write_body(problem, outcome.decisions, outcome.objectives, checkpoint)
    checkpoint()
    found = plan_problems(snapshot, body, problem.policy, prepared.reading, checkpoint)
    return replace(outcome, body=body, checked=found)


@dataclass(frozen=True)
class _Outcome:
    """An answer's decisions on concrete GPUs and pods and their figures; when made ahead, the plan's body too,
    and what the plan checks found in it."""

    decisions: Decisions
    objectives: ObjectiveBreakdown
    seconds: float  # what making the decisions and figures took
    body: Body | None = None
    checked: list[str] | None = None


def _outcome(problem: Problem, answer: AggregateSolution, checkpoint: Checkpoint) -> _Outcome:
    """An answer's decisions on concrete GPUs and pods, and their figures."""
    began = time.perf_counter()
    decisions = disaggregate(problem, answer, checkpoint)
    return _Outcome(decisions, score(problem, decisions), time.perf_counter() - began)


def _disaggregated(problem: Problem, answer: AggregateSolution, speculation: Speculation[_Outcome]) -> _Outcome:
    """The final answer's outcome: the speculation's when it made it (or is making it), else made here."""
    claimed = speculation.claim(answer)
    return claimed if claimed is not None else _outcome(problem, answer, carry_on)


def _unsolved(greedy: Draft, elapsed: float) -> Draft:
    """The greedy plan, as the optimal policy's answer when CP-SAT found no solution in time."""
    note = "CP-SAT found no solution within the time limit; returning the greedy plan"
    return replace(
        greedy, status=PlanStatus.GREEDY_FALLBACK, policy="optimal", solve_seconds=elapsed, notes=[*greedy.notes, note]
    )


def _better(solved: Draft, greedy: Draft) -> Draft:
    """The solver's plan, unless the greedy one ranks higher (the time limit cut the search short)."""
    if rank(greedy) <= rank(solved):
        return solved
    note = "the greedy plan scored better than the solver's within the time limit"
    return replace(
        greedy, status=PlanStatus.GREEDY_FALLBACK, policy="optimal", solve_seconds=solved.solve_seconds,
        bound=max(solved.bound, greedy.objective), notes=[*solved.notes, note],
    )  # fmt: skip


def _optimal(
    problem: Problem,
    policy: PlanPolicy,
    clock: PlanClock,
    greedy: _Alongside,
    dump_model: Path | None = None,
) -> Draft | None:
    """Solve, disaggregate, and re-solve while several-device pods the IP served could not be co-located.

    The time limit covers these rounds and what follows them; each solve gets what is left of it less a reserve
    for that work (`_reserve`). The first solve's bound is the plan's bound: later rounds only add caps, so theirs
    would not be valid.
    """
    started = clock.elapsed()
    caps: dict[int, int] = {}
    best: Draft | None = None
    bound: int | None = None
    previous = None
    reserve = _reserve(clock)
    for round_ in range(_ROUNDS):
        if round_ and clock.left() - reserve < 0.2:
            break
        with clock.phase("model"):
            model = GeometryModel(problem, caps)
            if previous is not None:
                model.hint(previous)
        if round_ == 0 and dump_model is not None:
            clock.exclude(_dump(model, dump_model))  # writing the model is not planning time
        greedy.start()
        speculation = greedy.speculation()
        fallback = greedy.answer if round_ == 0 else None
        answer = model.solve(max(clock.left() - reserve, 0.05), fallback, speculation.offer)  # what is left
        greedy.solve_ended()
        clock.add("cpsat", model.cpsat_seconds)
        clock.add("model", model.solve_seconds - model.cpsat_seconds)
        if answer is None:
            break
        bound = answer.bound if bound is None else bound
        with clock.phase("disaggregate"):
            outcome = _disaggregated(problem, answer, speculation)
        reserve += outcome.seconds  # another round would disaggregate once more
        elapsed = clock.elapsed() - started
        decisions = outcome.decisions
        with clock.phase("assemble"):
            scored = draft(
                problem, decisions, status=PlanStatus.FEASIBLE, policy_name="optimal", solve_seconds=elapsed,
                bound=bound, objectives=outcome.objectives,
            )  # fmt: skip
            scored.body, scored.checked = outcome.body, outcome.checked
        if round_ == 0 and scored.objective >= bound:  # the served objective meets its proven bound
            scored.status = PlanStatus.OPTIMAL
        scored.notes.append(f"round {round_ + 1}: cp-sat stages {', '.join(answer.stage_status)}")
        if best is None or rank(scored) > rank(best):
            best = replace(scored, notes=(best.notes if best else []) + scored.notes)
        elif best is not None:
            best.notes.extend(scored.notes)
        achieved = _achieved(problem, decisions.placements)
        short = {di: achieved.get(di, 0) for di, served in answer.served.items() if achieved.get(di, 0) < served}
        if not short:
            break
        caps.update(short)
        previous = answer
    if best is not None:
        best.solve_seconds = round(clock.elapsed() - started, 4)
    return best


_RESERVE_FACTOR = 2.0
"""The work after CP-SAT (disaggregation, assembly, validation) over aggregation, both reading the same cluster
and pods: measured 1.0 on a random and 1.8 on a fragmented 1,000 × 8 snapshot with 5,000 pending (the phases in
the plan's `timings`); the larger ratio is kept so that fragmented clusters, whose repairs cost most, stay within
the limit."""


def _reserve(clock: PlanClock) -> float:
    """Seconds to keep back from CP-SAT for the work after it, estimated from aggregation's."""
    return _RESERVE_FACTOR * clock.phases.get("aggregate", 0.0)


def _achieved(problem: Problem, placements: Mapping[str, object]) -> Counter[int]:
    """Placed pods per pod group (counted from the placements: a pass over every group's pods took 0.03 s at
    5,000 nodes, on the way to the plan)."""
    group_of = problem.group_of_pod()
    return Counter([group_of[name] for name in placements])


def _check_writable(path: Path) -> None:
    """Fail before planning, not after solving, when the model could not be written where asked."""
    if path.is_dir():
        raise MigoptError(f"cannot write the CP-SAT model to {path}: it is a directory")
    if not path.parent.is_dir():
        raise MigoptError(f"cannot write the CP-SAT model to {path}: directory {path.parent} does not exist")


def _dump(model: GeometryModel, path: Path) -> float:
    """Write the model as text to `path`; return the seconds that took, which the time limit does not count."""
    started = time.perf_counter()
    try:
        path.write_text(model.as_text())
    except OSError as err:
        raise MigoptError(f"cannot write the CP-SAT model to {path}: {err.strerror or err}") from None
    return time.perf_counter() - started
