"""The ValidatingAdmissionPolicy that confines the node agent (deploy/base/agent-admission.yaml): the agent's
ServiceAccount may change only the `migopt.io/gpu-report` annotation of the node named in its token, and the policy
matches no one else.

The policy is taken from the rendered kustomize output (as `kubectl apply -k deploy` would send it) and its CEL
(matchConditions, variables, validations, messageExpressions) is evaluated with cel-python (`celpy`) against
admission-request-shaped activations: `request` (operation, kind, resource, userInfo with `extra`), `object`,
`oldObject`. This is a CEL library, not a kube-apiserver: what the API server itself does before admission (strategy
resets, immutable-field checks, the unstructured conversion) is assumed or imitated here, not exercised.

Needs `kubectl` (for `kubectl kustomize`); fails where it is not installed.
"""

from __future__ import annotations

import copy
import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import celpy
import kubernetes_validate
import pytest
from celpy import celtypes
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_deploy import K8S_VERSION, VARIANTS, one, render

Obj = dict[str, Any]
POLICY = "migopt-agent-own-node-report"
AGENT = "system:serviceaccount:migopt-system:migopt-agent"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
REPORT = "migopt.io/gpu-report"
OWN, OTHER = "gpu-node-1", "gpu-node-2"


@pytest.fixture(autouse=True)
def _kubectl_installed() -> None:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not installed (the README's test setup needs it)")


# ---- the policy, compiled with celpy ------------------------------------------------------------------------


@dataclass(frozen=True)
class Validation:
    expression: celpy.Runner
    message: str
    message_expression: celpy.Runner | None


@dataclass(frozen=True)
class Decision:
    """What the API server would do with the request: `matched` False means the policy does not apply at all."""

    matched: bool
    denials: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # evaluation errors; each denies (failurePolicy: Fail)

    @property
    def allowed(self) -> bool:
        return not self.denials and not self.errors


@dataclass(frozen=True)
class CompiledPolicy:
    match_conditions: list[tuple[str, celpy.Runner]]
    variables: list[tuple[str, celpy.Runner]]
    validations: list[Validation]

    def decide(self, activation: Obj) -> Decision:
        context: dict[str, Any] = {name: celpy.json_to_cel(value) for name, value in activation.items()}
        for name, condition in self.match_conditions:
            result = _run(condition, context)
            if isinstance(result, Exception):
                return Decision(matched=True, errors=[f"matchCondition {name}: {result}"])
            if not result:
                return Decision(matched=False)
        values: dict[celtypes.StringType, Any] = {}
        for name, expression in self.variables:
            values[celtypes.StringType(name)] = _run(expression, {**context, "variables": celtypes.MapType(values)})
        context["variables"] = celtypes.MapType(values)
        denials: list[str] = []
        errors: list[str] = []
        for validation in self.validations:
            result = _run(validation.expression, context)
            if isinstance(result, Exception) or not isinstance(result, celtypes.BoolType):
                errors.append(f"{validation.message}: {result!r}")
            elif not result:
                denials.append(self._message(validation, context))
        return Decision(matched=True, denials=denials, errors=errors)

    @staticmethod
    def _message(validation: Validation, context: dict[str, Any]) -> str:
        """messageExpression when it gives a string, else message (as the API server falls back)."""
        if validation.message_expression is not None:
            text = _run(validation.message_expression, context)
            if isinstance(text, str):  # celpy gives a plain str for a concatenation
                return str(text)
        return validation.message


def _run(program: celpy.Runner, context: dict[str, Any]) -> Any:
    try:
        return program.evaluate(context)
    except Exception as err:  # celpy raises CELEvalError (and, rarely, others) for what the API server calls an error
        return err


def _compile(env: celpy.Environment, expression: str) -> celpy.Runner:
    return env.program(env.compile(expression))


@functools.cache
def rendered() -> tuple[Obj, Obj]:
    objs = render("default")
    return one(objs, "ValidatingAdmissionPolicy", POLICY), one(objs, "ValidatingAdmissionPolicyBinding", POLICY)


@functools.cache
def compiled() -> CompiledPolicy:
    spec = rendered()[0]["spec"]
    env = celpy.Environment()
    return CompiledPolicy(
        match_conditions=[(c["name"], _compile(env, c["expression"])) for c in spec["matchConditions"]],
        variables=[(v["name"], _compile(env, v["expression"])) for v in spec.get("variables", [])],
        validations=[
            Validation(
                expression=_compile(env, v["expression"]),
                message=v["message"],
                message_expression=_compile(env, v["messageExpression"]) if "messageExpression" in v else None,
            )
            for v in spec["validations"]
        ],
    )


# ---- admission requests -------------------------------------------------------------------------------------


def node(name: str = OWN) -> Obj:
    """A GPU node as an admission policy sees it (JSON of the stored object: empty fields omitted)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": "1000",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {
                "kubernetes.io/hostname": name,
                "nvidia.com/mig.capable": "true",
                "nvidia.com/mig.config": "all-1g.10gb",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                REPORT: '{"gpus": []}',
            },
            "managedFields": [
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z"}
            ],
        },
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "providerID": f"kind://{name}",
            "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        },
        "status": {
            "capacity": {"cpu": "64", "nvidia.com/mig-1g.10gb": "7"},
            "allocatable": {"cpu": "63", "nvidia.com/mig-1g.10gb": "7"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def omit_empty(obj: Obj) -> Obj:
    """Drop the empty maps and lists the API server's JSON leaves out (labels, annotations, taints)."""
    for holder, key in ((obj["metadata"], "labels"), (obj["metadata"], "annotations"), (obj["spec"], "taints")):
        if key in holder and not holder[key]:
            del holder[key]
    return obj


def stored_update(old: Obj, edit: Callable[[Obj], None]) -> Obj:
    """The object admission sees after an update by the agent: the edit, plus what the API server changes itself
    (resourceVersion, managedFields)."""
    new = copy.deepcopy(old)
    edit(new)
    new["metadata"]["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1)
    new["metadata"]["managedFields"] = [
        *old["metadata"].get("managedFields", []),
        {"manager": "migopt", "operation": "Update", "apiVersion": "v1", "time": "2026-01-01T00:05:00Z"},
    ]
    return omit_empty(new)


def admission(
    old: Obj, new: Obj, *, user: str = AGENT, bound_nodes: list[str] | None = None, extra: bool = True
) -> Obj:
    """The activation of an UPDATE of `new` over `old`. `bound_nodes` defaults to [OWN]; extra=False: no extra at
    all (a token not bound to a pod)."""
    user_info: Obj = {"username": user, "uid": "u-1", "groups": ["system:serviceaccounts", "system:authenticated"]}
    if extra:
        user_info["extra"] = {
            "authentication.kubernetes.io/pod-name": ["migopt-agent-x7k2p"],
            "authentication.kubernetes.io/pod-uid": ["pod-uid-1"],
        }
        if bound_nodes is None or bound_nodes:
            user_info["extra"][NODE_NAME_EXTRA] = [OWN] if bound_nodes is None else bound_nodes
    request = {
        "uid": "req-1",
        "kind": {"group": "", "version": "v1", "kind": "Node"},
        "resource": {"group": "", "version": "v1", "resource": "nodes"},
        "requestKind": {"group": "", "version": "v1", "kind": "Node"},
        "requestResource": {"group": "", "version": "v1", "resource": "nodes"},
        "name": new["metadata"]["name"],
        "operation": "UPDATE",
        "userInfo": user_info,
        "dryRun": False,
        "options": {"kind": "PatchOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "migopt"},
    }
    return {"request": request, "object": new, "oldObject": old}


def decide(old: Obj, edit: Callable[[Obj], None], **kwargs: Any) -> Decision:
    return compiled().decide(admission(old, stored_update(old, edit), **kwargs))


def set_report(value: str) -> Callable[[Obj], None]:
    def edit(obj: Obj) -> None:
        obj["metadata"].setdefault("annotations", {})[REPORT] = value

    return edit


def assert_denied(decision: Decision, *words: str) -> None:
    assert decision.matched and not decision.errors, decision
    assert decision.denials, decision
    text = " ".join(decision.denials)
    assert all(word in text for word in words), decision


# ---- the objects --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_policy_and_binding_are_in_every_variant_and_pass_the_kubernetes_schemas(variant: str) -> None:
    objs = render(variant)
    policy = one(objs, "ValidatingAdmissionPolicy", POLICY)
    binding = one(objs, "ValidatingAdmissionPolicyBinding", POLICY)
    assert (policy, binding) == rendered()
    for obj in (policy, binding):
        assert obj["apiVersion"] == "admissionregistration.k8s.io/v1" and "namespace" not in obj["metadata"]
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_policy_denies_only_updates_of_nodes_and_fails_closed() -> None:
    policy, binding = rendered()
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail" and "paramKind" not in spec
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes", "nodes/status"]}
    ]
    assert binding["spec"] == {"policyName": POLICY, "validationActions": ["Deny"]}
    assert all(v.get("message") for v in spec["validations"])  # every denial says what was denied


# ---- who it applies to --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user",
    [
        "system:serviceaccount:migopt-system:migopt-controller",
        "system:node:gpu-node-1",
        "kubernetes-admin",
        "system:serviceaccount:other-namespace:migopt-agent",
        "system:serviceaccount:migopt-system:migopt-agent2",
        "system:serviceaccount:migopt-system:migopt-agen",
    ],
)
def test_requests_of_anyone_else_do_not_match(user: str) -> None:
    def relabel(obj: Obj) -> None:
        obj["metadata"]["labels"]["nvidia.com/mig.config"] = "all-7g.80gb"
        obj["spec"]["unschedulable"] = True

    decision = decide(node(), relabel, user=user, extra=False)
    assert decision == Decision(matched=False)


def test_the_agents_requests_match() -> None:
    assert decide(node(), set_report('{"gpus": [1]}')).matched


# ---- allowed ------------------------------------------------------------------------------------------------


def test_own_report_changed_is_allowed() -> None:
    decision = decide(node(), set_report('{"gpus": [{"index": 0}]}'))
    assert decision.matched and decision.allowed, decision


def test_own_report_added_is_allowed() -> None:
    before = node()
    del before["metadata"]["annotations"][REPORT]
    assert compiled().decide(admission(before, stored_update(before, set_report("{}")))).allowed
    bare = node()  # no annotations at all before
    del bare["metadata"]["annotations"]
    assert compiled().decide(admission(bare, stored_update(bare, set_report("{}")))).allowed


def test_an_unchanged_report_is_allowed() -> None:
    assert decide(node(), lambda obj: None).allowed


def test_managed_fields_resource_version_and_generation_are_ignored() -> None:
    old = node()
    new = copy.deepcopy(old)
    new["metadata"]["annotations"][REPORT] = "{}"
    new["metadata"]["resourceVersion"] = "9999"
    new["metadata"]["generation"] = 7
    new["metadata"]["managedFields"] = []
    assert compiled().decide(admission(old, new)).allowed


def test_the_status_subresource_is_held_to_the_same_rule() -> None:
    activation = admission(node(), stored_update(node(), set_report("{}")))
    activation["request"]["subResource"] = "status"
    assert compiled().decide(activation).allowed


# ---- denied -------------------------------------------------------------------------------------------------


def test_another_nodes_report_is_denied() -> None:
    decision = decide(node(OTHER), set_report("{}"))
    assert_denied(decision, f"the agent on node {OWN} may not change node {OTHER}")


def test_a_token_for_two_nodes_is_denied() -> None:
    assert_denied(decide(node(), set_report("{}"), bound_nodes=[OWN, OTHER]), "names no node")


@pytest.mark.parametrize("extra", [False, True], ids=["no-extra", "extra-without-node-name"])
def test_a_token_without_a_node_name_is_denied(extra: bool) -> None:
    assert_denied(decide(node(), set_report("{}"), bound_nodes=[], extra=extra), NODE_NAME_EXTRA)


@pytest.mark.parametrize(
    "edit",
    [
        lambda obj: obj["metadata"]["labels"].__setitem__("nvidia.com/mig.config", "all-7g.80gb"),
        lambda obj: obj["metadata"]["labels"].__setitem__("node-role.kubernetes.io/control-plane", ""),
        lambda obj: obj["metadata"]["labels"].pop("nvidia.com/mig.capable"),
        lambda obj: obj["metadata"].pop("labels"),
    ],
    ids=["changed", "added", "removed", "all-removed"],
)
def test_a_label_change_is_denied(edit: Callable[[Obj], None]) -> None:
    def both(obj: Obj) -> None:
        set_report("{}")(obj)
        edit(obj)

    assert_denied(decide(node(), both), "labels")


@pytest.mark.parametrize(
    "edit",
    [
        lambda obj: obj["spec"]["taints"].append({"key": "evil", "effect": "NoExecute"}),
        lambda obj: obj["spec"].pop("taints"),
        lambda obj: obj["spec"]["taints"][0].__setitem__("effect", "PreferNoSchedule"),
        lambda obj: obj["spec"].__setitem__("unschedulable", True),
        lambda obj: obj["spec"].__setitem__("podCIDR", "10.0.0.0/8"),
    ],
    ids=["taint-added", "taints-removed", "taint-changed", "cordon", "pod-cidr"],
)
def test_a_taint_or_any_spec_change_is_denied(edit: Callable[[Obj], None]) -> None:
    assert_denied(decide(node(), edit), "spec")


def test_a_status_change_is_denied() -> None:
    def edit(obj: Obj) -> None:
        obj["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] = "0"

    assert_denied(decide(node(), edit), "status")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda obj: obj["metadata"]["annotations"].__setitem__("migopt.io/other", "x"), "add or change only"),
        (lambda obj: obj["metadata"]["annotations"].__setitem__("node.alpha.kubernetes.io/ttl", "30"), "change only"),
        (lambda obj: obj["metadata"]["annotations"].pop("node.alpha.kubernetes.io/ttl"), "remove node annotations"),
    ],
    ids=["added", "changed", "removed"],
)
def test_another_annotation_is_denied(edit: Callable[[Obj], None], words: str) -> None:
    def both(obj: Obj) -> None:
        set_report("{}")(obj)
        edit(obj)

    assert_denied(decide(node(), both), words)


def test_removing_every_other_annotation_is_denied() -> None:
    def only_report(obj: Obj) -> None:
        obj["metadata"]["annotations"] = {REPORT: "{}"}

    assert_denied(decide(node(), only_report), "remove node annotations")


def test_removing_the_report_is_denied() -> None:
    assert_denied(decide(node(), lambda obj: obj["metadata"]["annotations"].pop(REPORT)), f"remove its {REPORT}")


@pytest.mark.parametrize(
    "edit",
    [
        lambda obj: obj["metadata"].__setitem__("finalizers", ["example.com/hold"]),
        lambda obj: obj["metadata"].__setitem__(
            "ownerReferences", [{"apiVersion": "v1", "kind": "Pod", "name": "x", "uid": "y"}]
        ),
    ],
    ids=["finalizers", "owner-references"],
)
def test_other_metadata_is_denied(edit: Callable[[Obj], None]) -> None:
    assert_denied(decide(node(), edit), "finalizers")


# ---- property: allowed iff the only difference is the own report --------------------------------------------

LABEL_KEYS = ["kubernetes.io/hostname", "nvidia.com/mig.config", "nvidia.com/mig.capable", "example.com/pool"]
ANNOTATION_KEYS = [REPORT, REPORT, "node.alpha.kubernetes.io/ttl", "migopt.io/other", "nvidia.com/mig.config.state"]
VALUES = ["", "a", "b", '{"gpus": []}']
TAINTS = st.fixed_dictionaries(
    {"key": st.sampled_from(["nvidia.com/gpu", "evil"]), "effect": st.sampled_from(["NoSchedule", "NoExecute"])}
)
EDITS = st.one_of(
    st.tuples(st.just("label"), st.sampled_from(LABEL_KEYS), st.none() | st.sampled_from(VALUES)),
    st.tuples(st.just("annotation"), st.sampled_from(ANNOTATION_KEYS), st.none() | st.sampled_from(VALUES)),
    st.tuples(st.just("taint"), TAINTS, st.booleans()),
)


def apply(obj: Obj, edits: list[tuple[str, Any, Any]]) -> None:
    """None deletes a label or annotation; a taint is appended (True) or its first equal one removed (False)."""
    for what, key, value in edits:
        if what == "taint":
            taints = obj["spec"].setdefault("taints", [])
            if value:
                taints.append(key)
            elif key in taints:
                taints.remove(key)
            continue
        holder = obj["metadata"].setdefault("labels" if what == "label" else "annotations", {})
        if value is None:
            holder.pop(key, None)
        else:
            holder[key] = value


@settings(max_examples=150, deadline=None)
@given(
    labels=st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(VALUES)),
    annotations=st.dictionaries(st.sampled_from(ANNOTATION_KEYS), st.sampled_from(VALUES)),
    taints=st.lists(TAINTS, max_size=2),
    edits=st.lists(EDITS, max_size=4),
    target=st.sampled_from([OWN, OWN, OTHER]),
)
def test_random_edits_are_allowed_iff_only_the_own_report_changed(
    labels: dict[str, str],
    annotations: dict[str, str],
    taints: list[Obj],
    edits: list[tuple[str, Any, Any]],
    target: str,
) -> None:
    old = node(target)
    old["metadata"]["labels"], old["metadata"]["annotations"], old["spec"]["taints"] = labels, annotations, taints
    old = omit_empty(old)
    new = stored_update(old, lambda obj: apply(obj, edits))
    decision = compiled().decide(admission(old, new))

    def rest(obj: Obj) -> tuple[Any, ...]:
        meta = obj["metadata"]
        others = {k: v for k, v in meta.get("annotations", {}).items() if k != REPORT}
        return meta.get("labels", {}), others, obj["spec"].get("taints", [])

    expected = target == OWN and rest(old) == rest(new) and REPORT in new["metadata"].get("annotations", {})
    assert decision.matched and not decision.errors, decision
    assert decision.allowed == expected, (edits, decision)
