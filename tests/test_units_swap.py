"""In-process tests of the hot swap's decision (`_swap.plan_swap`, design §8): which trackers a
reload keeps, replaces, starts and removes. The swap itself, through the real daemon, is in
test_trackers.py and test_tracker_swap_real.py."""

from __future__ import annotations

from dataclasses import dataclass

from magnusd._config import TrackerDef
from magnusd._swap import SwapOp, SwapPlan, SwapStep, plan_swap


@dataclass
class FakeRunner:
    defn: TrackerDef
    constructed: bool = True


def file_def(name: str, path: str = "/tmp/a.jsonl", timeout_s: float = 120.0) -> TrackerDef:
    return TrackerDef("file", name, {"path": path}, timeout_s=timeout_s)


def running(*defs: TrackerDef, constructed: bool = True) -> dict[str, FakeRunner]:
    return {d.key: FakeRunner(d, constructed) for d in defs}


def test_an_unchanged_tracker_is_kept() -> None:
    a = file_def("a")
    plan = plan_swap(running(a), [file_def("a")])
    assert plan == SwapPlan((SwapStep(SwapOp.KEEP, a),), ())


def test_a_changed_config_is_replaced_under_the_same_name() -> None:
    new = file_def("a", "/tmp/b.jsonl")
    plan = plan_swap(running(file_def("a")), [new])
    assert plan == SwapPlan((SwapStep(SwapOp.REPLACE, new),), ())


def test_a_changed_option_outside_config_is_a_change_too() -> None:
    plan = plan_swap(running(file_def("a")), [file_def("a", timeout_s=5.0)])
    assert plan.names(SwapOp.REPLACE) == ["a"]


def test_a_tracker_that_never_got_constructed_is_replaced_even_when_unchanged() -> None:
    plan = plan_swap(running(file_def("a"), constructed=False), [file_def("a")])
    assert plan.names(SwapOp.REPLACE) == ["a"] and plan.names(SwapOp.KEEP) == []


def test_a_new_name_is_started() -> None:
    b = file_def("b")
    plan = plan_swap(running(file_def("a")), [file_def("a"), b])
    assert plan.steps[1] == SwapStep(SwapOp.START, b)
    assert plan.names(SwapOp.START) == ["b"] and plan.remove == ()


def test_a_name_no_longer_wanted_is_removed() -> None:
    plan = plan_swap(running(file_def("a"), file_def("b")), [file_def("b")])
    assert plan.names(SwapOp.KEEP) == ["b"]
    assert plan.remove == ("a",) and plan.names(SwapOp.REMOVE) == ["a"]


def test_a_rename_is_a_removal_and_a_start() -> None:
    plan = plan_swap(running(file_def("old")), [file_def("new")])
    assert plan.names(SwapOp.START) == ["new"] and plan.remove == ("old",)
    assert plan.names(SwapOp.KEEP) == plan.names(SwapOp.REPLACE) == []


def test_the_name_defaults_to_the_type() -> None:
    unnamed = TrackerDef("file", None, {"path": "/tmp/a.jsonl"})
    plan = plan_swap(running(unnamed), [TrackerDef("file", "file", {"path": "/tmp/a.jsonl"})])
    assert plan.names(SwapOp.REPLACE) == ["file"]  # same key, different definition


def test_steps_follow_the_wanted_order_and_removals_the_running_order() -> None:
    run = running(file_def("c"), file_def("x"), file_def("a"), file_def("y"))
    wanted = [file_def("b"), file_def("a"), file_def("c", "/tmp/c.jsonl"), file_def("d")]
    plan = plan_swap(run, wanted)
    assert [(s.op, s.defn.key) for s in plan.steps] == [
        (SwapOp.START, "b"), (SwapOp.KEEP, "a"), (SwapOp.REPLACE, "c"), (SwapOp.START, "d")]
    assert plan.remove == ("x", "y")


def test_no_trackers_wanted_removes_them_all_and_nothing_running_starts_them_all() -> None:
    assert plan_swap(running(file_def("a"), file_def("b")), []) == SwapPlan((), ("a", "b"))
    plan = plan_swap({}, [file_def("a"), file_def("b")])
    assert plan.names(SwapOp.START) == ["a", "b"] and plan.remove == ()


def test_op_kinds_are_their_strings() -> None:
    assert [str(op) for op in SwapOp] == ["keep", "replace", "start", "remove"]
