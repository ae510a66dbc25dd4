"""The cluster-wide MIG geometry integer program, solved with OR-Tools CP-SAT on the aggregated problem.

Variables (all integer):
  r[u]      members of unit u reconfigured (0 when its pods may not be evicted)
  y[g, t]   reconfigured members of group g given target t;   sum_t y[g, t] = sum_{u in g} r[u]
  s[d]      pods of pod group d served
  z[d, P, k] devices of resource key k that group d takes from pool P (only pools d may use);
            sum_P z[d, P, k] = request_d[k] * s[d]
Capacity per pool P and key k:
  sum_d z[d, P, k] <= sum_{u: pool P} keep_k(u) * (members(u) - r[u]) + sum_{g: pool P} sum_t cap_k(t) * y[g, t]
A member already at target t cannot "change" to it: sum of r[u] over units of g at t <= sum_{t' != t} y[g, t'].
Policy: sum_u evict_pods(u) r[u] <= max_evictions; sum_u gpus(u) r[u] <= max_reconfigurations.

Lexicographic objective; terms are folded into one weighted objective while that stays exact (see `stages`),
else solved in stages, each fixing the previous optimum (or best found) as a bound:
  1. maximise sum_d weight(d) s[d]                              (priority-weighted demand served)
  2. minimise sum_u r[u] (evict_weight(u) * B + gpus(u))       (evictions by priority, then GPUs reconfigured;
                                                                 B exceeds any possible GPU count)
  3. with a forecast (the proactive policy's expected arrivals E_k per key k), maximise
     sum_k slices(k) x[k], x[k] <= E_k, x[k] <= the pools' devices of key k left after serving
                                                                (expected demand the plan leaves room for)
  4. minimise idle slices of kept and reconfigured members      (fragmentation; devices of an expected key
                                                                 count as useful)

Pods asking for devices on one node are relaxed to draw from any pool they may use, so the stage-1 bound stays
a valid upper bound; co-location is restored when the answer is disaggregated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from solver.demand import key_compute_slices
from solver.problem import Problem

_sum = cp_model.LinearExpr.sum  # one flat sum: Python's `sum` makes a new expression per term
_weighted = cp_model.LinearExpr.weighted_sum
_EXACT = 2**53  # integers up to here survive CP-SAT's floating-point objective handling exactly
SERVED, DISRUPTION, FRAGMENTATION, EXPECTED = range(4)  # the objective's terms, as `stages` numbers them
_MAXIMISED = (SERVED, EXPECTED)


@dataclass
class AggregateSolution:
    reconfigured: dict[int, int]
    targets: dict[int, list[int]]
    served: dict[int, int]
    allocation: dict[tuple[int, int, str], int]
    proven_optimal: bool
    objective: int
    bound: int
    solve_seconds: float
    stage_status: list[str] = field(default_factory=list)

    def decides_as(self, other: AggregateSolution) -> bool:
        """Whether the two answers decide the same (what disaggregation reads), whatever their figures."""
        return (self.reconfigured, self.targets, self.served, self.allocation) == (
            other.reconfigured, other.targets, other.served, other.allocation,
        )  # fmt: skip


Incumbents = Callable[[Callable[[], AggregateSolution]], None]
"""Told of each solution the last stage finds, as it finds it: a call that reads its answer (figures left at 0)."""


class _Reporter(cp_model.CpSolverSolutionCallback):
    """Hands each solution CP-SAT finds to `Incumbents`, reading no more than a copy of its values on CP-SAT's
    thread (the answer is read where it is used)."""

    def __init__(self, model: GeometryModel, incumbents: Incumbents) -> None:
        super().__init__()
        self._model, self._incumbents = model, incumbents

    def on_solution_callback(self) -> None:
        values = list(self.response_proto.solution)
        self._incumbents(lambda: self._model.decisions_of(values))


@dataclass
class _Linear:
    """A linear expression gathered as variables, coefficients and a constant, and made in one call
    (`expression`): CP-SAT writes a linear constraint in the same canonical form however its expression was
    built, and one weighted sum is far cheaper than a Python expression per term."""

    variables: list[cp_model.IntVar] = field(default_factory=list)
    coefficients: list[int] = field(default_factory=list)
    constant: int = 0

    def add(self, variable: cp_model.IntVar, coefficient: int) -> None:
        self.variables.append(variable)
        self.coefficients.append(coefficient)

    def add_kept(self, per_member: int, members: int, reconfigured: cp_model.IntVar | None) -> None:
        """`per_member` times the members that keep their map: all of them, less those reconfigured (if any)."""
        self.constant += per_member * members
        if reconfigured is not None:
            self.add(reconfigured, -per_member)

    def extend(self, other: _Linear) -> None:
        self.variables += other.variables
        self.coefficients += other.coefficients
        self.constant += other.constant

    def expression(self) -> cp_model.LinearExpr:
        return _weighted(self.variables, self.coefficients) + self.constant

    def value(self, values: dict[int, int]) -> int:
        """The expression's value where each variable (by index) has the given value (0 when not given)."""
        terms = zip(self.variables, self.coefficients, strict=True)
        return self.constant + sum(c * values.get(v.index, 0) for v, c in terms)


class GeometryModel:
    """Builds the CP-SAT model once; `solve` runs the three lexicographic stages."""

    def __init__(self, problem: Problem, served_caps: dict[int, int] | None = None) -> None:
        """`served_caps` bounds pods served per pod group (used to re-solve after co-location failed)."""
        self.problem = problem
        self.served_caps = served_caps or {}
        self.model = cp_model.CpModel()
        self.pool_index = {pool: i for i, pool in enumerate(problem.pools)}
        self.cpsat_seconds = 0.0  # CP-SAT's own solving in `solve`, every stage
        self.solve_seconds = 0.0  # all of `solve`: CP-SAT and the Python between its stages
        self._hinted: list[int] | None = None  # the variables a stage's solution hints the next with, by index
        # per forecast key: the room variable, the devices left that bound it, the forecast count
        self.room: dict[str, tuple[cp_model.IntVar, _Linear, int]] = {}
        self._build()

    def _build(self) -> None:
        """The model in three sections: variables, then constraints, then the objective terms the stages weigh."""
        self._add_variables()
        self._add_constraints()
        self._define_objective_terms()

    # --- variables ----------------------------------------------------------------------------------------------

    def _add_variables(self) -> None:
        """r, y, s, z, in this order, which fixes their indices in the model; z exists only where supply does."""
        self._add_reconfiguration_variables()
        self.supply = self._supply()
        self._add_demand_variables()

    def _add_reconfiguration_variables(self) -> None:
        """r: members of a unit reconfigured; y: reconfigured members of a group per target."""
        p, m = self.problem, self.model
        in_group = {u for g in p.reconfig_groups for u in g.units}
        self.r = {u: m.new_int_var(0, len(p.units[u].members), f"r{u}") for u in sorted(in_group)}
        members = [sum(len(p.units[u].members) for u in g.units) for g in p.reconfig_groups]
        self.y = {
            (gi, ti): m.new_int_var(0, members[gi], f"y{gi}_{ti}")
            for gi, g in enumerate(p.reconfig_groups)
            for ti in range(len(g.targets))
        }

    def _add_demand_variables(self) -> None:
        """s: pods of a pod group served; z: devices of a key it takes from a pool that it may use and that offers it.

        `takes` lists a pod group's z per key in pool order; empty when no usable pool offers the key.
        """
        p, m = self.problem, self.model
        self.s = {
            di: m.new_int_var(0, min(len(d.demands), self.served_caps.get(di, len(d.demands))), f"s{di}")
            for di, d in enumerate(p.pod_groups)
        }
        self.z: dict[tuple[int, int, str], cp_model.IntVar] = {}
        self.takes: dict[tuple[int, str], list[cp_model.IntVar]] = {}
        for di, d in enumerate(p.pod_groups):
            pools = [self.pool_index[pool] for pool in p.pools if p.usable(d, pool)]
            for key, count in d.resources:
                offering = [pi for pi in pools if (pi, key) in self.supply]
                self.takes[di, key] = []
                for pi in offering:
                    var = self.z[di, pi, key] = m.new_int_var(0, count * len(d.demands), f"z{di}_{pi}_{key}")
                    self.takes[di, key].append(var)

    def _supply(self) -> dict[tuple[int, str], _Linear]:
        """Devices per (pool, key): kept members' free devices plus what reconfigured members' targets offer."""
        p = self.problem
        supply: dict[tuple[int, str], _Linear] = {}
        for ui, unit in enumerate(p.units):
            pool = self.pool_index[unit.pool]
            for key, count in unit.keep_capacity:
                supply.setdefault((pool, key), _Linear()).add_kept(count, len(unit.members), self.r.get(ui))
        for gi, g in enumerate(p.reconfig_groups):
            pool = self.pool_index[g.pool]
            for ti, target in enumerate(g.targets):
                for key, count in target.capacity:
                    supply.setdefault((pool, key), _Linear()).add(self.y[gi, ti], count)
        return supply

    # --- constraints --------------------------------------------------------------------------------------------

    def _add_constraints(self) -> None:
        """Targets, then demand, then pool capacity, then the policy caps (this order fixes the model's text)."""
        self._target_constraints()
        self._demand_constraints()
        self._capacity_constraints()
        self._policy_constraints()

    def _target_constraints(self) -> None:
        """Each reconfigured member gets one target, and not the one it already holds (that is no change)."""
        p, m = self.problem, self.model
        for gi, g in enumerate(p.reconfig_groups):
            m.add(_sum([self.y[gi, ti] for ti in range(len(g.targets))]) == _sum([self.r[u] for u in g.units]))
            at: dict[tuple[tuple[str, int], ...] | None, list[cp_model.IntVar]] = {}
            for u in g.units:
                at.setdefault(p.units[u].current, []).append(self.r[u])
            for ti, target in enumerate(g.targets):
                # a member already at target t does not change (mig-parted skips it), so those members must take
                # other targets; each member excludes one target at most, so this makes an assignment exist (Hall)
                at_t = at.get(target.as_current, [])
                if at_t:
                    m.add(_sum(at_t) <= _sum([self.y[gi, other] for other in range(len(g.targets)) if other != ti]))

    def _demand_constraints(self) -> None:
        """A served pod gets every device it asks for; a key no usable pool offers means none is served."""
        for di, d in enumerate(self.problem.pod_groups):
            for key, count in d.resources:
                takes = self.takes[di, key]
                if not takes:
                    self.model.add(self.s[di] == 0)
                    continue
                self.model.add(_sum(takes) == count * self.s[di])

    def _capacity_constraints(self) -> None:
        """No pool gives out more devices of a key than its kept and reconfigured members offer."""
        use: dict[tuple[int, str], list[cp_model.IntVar]] = {}
        for (_, pi, key), var in self.z.items():
            use.setdefault((pi, key), []).append(var)
        for (pi, key), takers in use.items():
            self.model.add(_sum(takers) <= self.supply[pi, key].expression())

    def _policy_constraints(self) -> None:
        """The plan policy's caps on evicted pods and reconfigured GPUs."""
        p, m = self.problem, self.model
        policy = p.policy
        if policy.max_evictions is not None:
            m.add(sum(p.units[u].evict_pods * var for u, var in self.r.items()) <= policy.max_evictions)
        if policy.max_reconfigurations is not None:
            m.add(sum(p.units[u].gpus_per_member * var for u, var in self.r.items()) <= policy.max_reconfigurations)

    # --- objective ----------------------------------------------------------------------------------------------

    def _define_objective_terms(self) -> None:
        """The three lexicographic terms and their upper bounds; `stages` decides how they are weighed."""
        p = self.problem
        self.served_weight = _weighted(list(self.s.values()), [d.weight for d in p.pod_groups])
        big = 1 + sum(len(u.members) * u.gpus_per_member for u in p.units)
        self.disruption = _weighted(
            list(self.r.values()), [p.units[u].evict_weight * big + p.units[u].gpus_per_member for u in self.r]
        )
        fragmentation = _Linear()
        for ui, unit in enumerate(p.units):
            fragmentation.add_kept(unit.keep_fragmentation, len(unit.members), self.r.get(ui))
        for gi, g in enumerate(p.reconfig_groups):
            for ti, t in enumerate(g.targets):
                fragmentation.add(self.y[gi, ti], t.fragmentation)
        self.fragmentation = fragmentation.expression()
        self.expected = self._expected_room()
        # upper bounds of the terms, to fold several into one integer objective without overlap
        self.maxima = (
            sum(d.weight * len(d.demands) for d in p.pod_groups),
            sum((p.units[u].evict_weight * big + p.units[u].gpus_per_member) * len(p.units[u].members) for u in self.r),
            sum(len(u.members) * u.gpus_per_member * u.model.compute_slices for u in p.units),
            sum(key_compute_slices(k) * c for k, c in p.expected.items()),
        )

    def _expected_room(self) -> cp_model.LinearExprT:
        """Compute slices of the forecast demand the devices left after serving could take (0 without one)."""
        terms: list[cp_model.LinearExprT] = []
        left: dict[str, _Linear] = {}
        for (_, key), supplied in self.supply.items():
            if key in self.problem.expected:
                left.setdefault(key, _Linear()).extend(supplied)
        for (_, _, key), var in self.z.items():
            if key in left:
                left[key].add(var, -1)
        for key, count in sorted(self.problem.expected.items()):
            room = self.model.new_int_var(0, count, f"x_{key}")
            self.room[key] = (room, left.get(key, _Linear()), count)
            self.model.add(room <= self.room[key][1].expression())
            terms.append(key_compute_slices(key) * room)
        return _sum(terms)

    def hint(self, previous: AggregateSolution, allocation: bool = False) -> None:
        """Start from an earlier answer (its served counts clipped to this model's caps); with `allocation`, its
        z too, which makes a complete solution of an answer that fits this model (the greedy plan's)."""
        self._set_hints(self._values(previous, allocation))

    def _values(self, answer: AggregateSolution, allocation: bool) -> list[tuple[cp_model.IntVar, int]]:
        """The variables' values in an answer (`hint`'s reading of it)."""
        pairs = [(var, answer.reconfigured.get(u, 0)) for u, var in self.r.items()]
        pairs += [(var, answer.targets.get(gi, [0] * (ti + 1))[ti]) for (gi, ti), var in self.y.items()]
        caps = self.served_caps
        pairs += [(var, min(answer.served.get(di, 0), caps.get(di, 10**9))) for di, var in self.s.items()]
        if allocation:
            pairs += [(var, answer.allocation.get(key, 0)) for key, var in self.z.items()]
            if self.room:  # the forecast's room too: a hint missing it is not a solution CP-SAT can start from
                values = {var.index: value for var, value in pairs}
                pairs += [(var, min(count, max(left.value(values), 0))) for var, left, count in self.room.values()]
        return pairs

    def _value(self, objective: cp_model.LinearExpr, answer: AggregateSolution) -> int:
        """The objective's value at a complete answer (the greedy plan's), to compare with what the search found."""
        values = {var.index: value for var, value in self._values(answer, allocation=True)}
        flat = cp_model.FlatIntExpr(objective)
        return sum(c * values.get(v.index, 0) for v, c in zip(flat.vars, flat.coeffs, strict=True)) + flat.offset

    def _set_hints(self, pairs: list[tuple[cp_model.IntVar, int]]) -> None:
        """Replace the hints with these, in this order: what `add_hint` per pair writes, in bulk."""
        self._write_hints([var.index for var, _ in pairs], [value for _, value in pairs])

    def _write_hints(self, indices: list[int], values: list[int]) -> None:
        self.model.clear_hints()  # type: ignore[no-untyped-call]
        hint = self.model.proto.solution_hint
        hint.vars.extend(indices)
        hint.values.extend(values)

    def _hint_from(self, solution: list[int]) -> None:
        """Hint the next stage with this one's solution (values by variable index): every variable, r, y, s, z and
        the forecast's room in that order (as `add_hint` would write them, in bulk)."""
        if self._hinted is None:
            rooms = [var for var, _, _ in self.room.values()]
            variables = (*self.r.values(), *self.y.values(), *self.s.values(), *self.z.values(), *rooms)
            self._hinted = [var.index for var in variables]
        self._write_hints(self._hinted, [solution[index] for index in self._hinted])

    def stages(self) -> list[list[int]]:
        """Terms (`SERVED`, `DISRUPTION`, `FRAGMENTATION`, `EXPECTED`) solved together per stage.

        Disruption is folded into the served stage when the scaled sum stays exact in a double (< 2**53): the
        first solution found then already avoids needless evictions, and one presolve is spared. Folding
        fragmentation too made proofs much slower in measurements, so it always gets a stage of its own; the
        expected-demand term, when there is a forecast, gets its own stage before it.
        """
        folded = (self.maxima[SERVED] + 1) * (self.maxima[DISRUPTION] + 1) < _EXACT
        first = [[SERVED, DISRUPTION]] if folded else [[SERVED], [DISRUPTION]]
        return [*first, *([[EXPECTED]] if self.problem.expected else []), [FRAGMENTATION]]

    def _maximize(self, objective: cp_model.LinearExpr) -> None:
        """`CpModel.maximize(objective)`, the same proto written in bulk: its loop over every term took a visible
        share of each stage on models of thousands of variables."""
        flat = cp_model.FlatIntExpr(objective)
        self.model.clear_objective()  # type: ignore[no-untyped-call]
        proto = self.model.proto.objective
        proto.vars.extend([var.index for var in flat.vars])
        proto.coeffs.extend([-coefficient for coefficient in flat.coeffs])
        proto.scaling_factor = -1.0
        proto.offset = -flat.offset

    def _objective(self, terms: list[int]) -> tuple[cp_model.LinearExpr, int]:
        """The stage's objective to maximise, and the factor of its first term."""
        expressions = (self.served_weight, self.disruption, self.fragmentation, self.expected)
        parts: list[cp_model.LinearExprT] = []
        coefficients: list[int] = []
        factor = 1
        for term in reversed(terms):
            parts.append(expressions[term])
            coefficients.append(factor if term in _MAXIMISED else -factor)
            factor *= self.maxima[term] + 1
        return cp_model.LinearExpr.weighted_sum(parts, coefficients), factor // (self.maxima[terms[0]] + 1)

    def as_text(self) -> str:
        """The model as the first stage hands it to CP-SAT, objective included, in `CpModelProto` text format.

        It sets that objective on the model; `solve` sets each stage's own, so solving afterwards is unaffected.
        """
        objective, _ = self._objective(self.stages()[0])
        self._maximize(objective)
        return str(self.model.Proto())

    def _solver(self) -> cp_model.CpSolver:
        """CP-SAT with the plan policy's workers; seed and presolve fixed, so that plans are reproducible and fast."""
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = self.problem.policy.workers
        solver.parameters.random_seed = 0
        # measured: presolve costs seconds on these models and its reductions do not pay that back
        solver.parameters.cp_model_presolve = False
        return solver

    def solve(
        self,
        time_limit_s: float | None = None,
        fallback: Callable[[], AggregateSolution] | None = None,
        incumbents: Incumbents | None = None,
    ) -> AggregateSolution | None:
        """Run the lexicographic stages within `time_limit_s`; None when the first found no solution.

        The limit is the plan policy's unless given: a planner solving in rounds passes the time it has left.
        `fallback` gives a complete answer (the greedy plan's) to start from when the first stage finds nothing in
        half its time, or only solutions worse than that answer: starting from it always gives a solution at least
        as good, but when time suffices the search without it ends on better plans more often (measured with
        benchmarks/plan_fingerprint.py), so it is the second try; it is asked for only then, as the greedy plan
        may still be in the making alongside this solve. `incumbents` is told of each solution of the last stage
        as it is found: the answer is the last of them, unless that stage finds none.
        """
        if time_limit_s is None:
            time_limit_s = self.problem.policy.time_limit_s
        started = time.perf_counter()
        statuses: list[str] = []
        solver = self._solver()
        served = bound = 0
        proven = False
        found: tuple[list[int], int, int, bool, list[str]] | None = None
        expressions = (self.served_weight, self.disruption, self.fragmentation, self.expected)
        stages = self.stages()
        for number, terms in enumerate(stages):
            left = time_limit_s - (time.perf_counter() - started)
            if number and left <= 0.01:
                break
            stage_s = max(left * (0.8 if number == 0 else 1.0), 0.01)
            retry = number == 0 and fallback is not None
            solver.parameters.max_time_in_seconds = max(stage_s / 2, 0.01) if retry else stage_s
            objective, factor = self._objective(terms)
            self._maximize(objective)
            solving = time.perf_counter()
            last = number == len(stages) - 1
            status = solver.solve(self.model, _Reporter(self, incumbents) if last and incumbents else None)
            self.cpsat_seconds += time.perf_counter() - solving
            statuses.append(solver.status_name(status))
            earlier_bound = None  # the first try's bound, when it found a solution: it bounds the same model
            if retry and fallback is not None and status != cp_model.OPTIMAL:
                start = fallback()
                if status != cp_model.FEASIBLE or self._value(objective, start) > solver.objective_value:
                    # nothing found, or worse than the greedy plan: the rest of the stage starts from the greedy plan
                    earlier_bound = solver.best_objective_bound if status == cp_model.FEASIBLE else None
                    self.hint(start, allocation=True)
                    solver.parameters.max_time_in_seconds = max(stage_s - (time.perf_counter() - solving), 0.01)
                    retried = time.perf_counter()
                    status = solver.solve(self.model)
                    self.cpsat_seconds += time.perf_counter() - retried
                    statuses.append(f"from greedy {solver.status_name(status)}")
            if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                break
            if number == 0:
                served, proven = int(solver.value(self.served_weight)), status == cp_model.OPTIMAL
                # objective = served * factor - rest, with 0 <= rest < factor, so served <= (B + factor - 1) / factor
                best_bound = solver.best_objective_bound
                if earlier_bound is not None:
                    best_bound = min(best_bound, earlier_bound)
                bound = int((int(best_bound + 1e-6) + factor - 1) // factor)
            solution = list(solver.response_proto.solution)  # by variable index: one copy, not a call per variable
            found = (solution, served, max(bound, served), proven, list(statuses))
            if number < len(stages) - 1:
                self._hint_from(solution)
            for term in terms:
                value = int(solver.value(expressions[term]))
                if term in _MAXIMISED:
                    self.model.add(expressions[term] >= value)
                else:
                    self.model.add(expressions[term] <= value)
        answer = None if found is None else self._read(*found)  # the last stage that found a solution
        self.solve_seconds += time.perf_counter() - started
        if answer is not None:
            answer.solve_seconds = time.perf_counter() - started
        return answer

    def decisions_of(self, values: list[int]) -> AggregateSolution:
        """What a solution (values by variable index) decides, its figures left at 0."""
        return self._read(values, 0, 0, False, [])

    def _read(
        self, values: list[int], objective: int, bound: int, proven: bool, statuses: list[str]
    ) -> AggregateSolution:
        """The answer in a solution's values (by variable index)."""
        p = self.problem
        return AggregateSolution(
            reconfigured={u: values[v.index] for u, v in self.r.items() if values[v.index]},
            targets={
                gi: [values[self.y[gi, ti].index] for ti in range(len(g.targets))]
                for gi, g in enumerate(p.reconfig_groups)
            },
            served={di: values[v.index] for di, v in self.s.items() if values[v.index]},
            allocation={k: values[v.index] for k, v in self.z.items() if values[v.index]},
            proven_optimal=proven,
            objective=objective,
            bound=bound,
            solve_seconds=0.0,
            stage_status=statuses,
        )
