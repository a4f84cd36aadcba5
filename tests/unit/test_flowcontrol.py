"""The flow controller's semantics, in process with a detector the test sets: immediate dispatch,
strict priority, fairness, capacity, TTL in both regimes, cancellation, shutdown, eviction, memory."""
import asyncio
import gc
import tracemalloc

import pytest

from epp.flowcontrol import outcomes as O

from .flow_helpers import controller, sample


async def settle(fc, until, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not until():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.001)


def order_of(futures: dict) -> list:
    """Names in the order their futures resolved (the callbacks append)."""
    done = []
    for name, f in futures.items():
        f.add_done_callback(lambda _, n=name: done.append(n))
    return done


async def test_an_unsaturated_pool_dispatches_at_once_without_a_future():
    fc = controller(sat=0.5)
    r = fc.submit("r1", "t", 0, 100)
    assert r is O.DISPATCHED_RESULT
    assert fc.queued == 0 and fc._pump is None
    assert sample(fc, "llm_d_epp_flow_control_requests_total", outcome="Dispatched", priority="0",
                  inference_pool="pool") == 1
    # the deprecated family is written too
    assert sample(fc, "inference_extension_flow_control_request_queue_duration_seconds_count", fairness_id="t",
                  priority="0", outcome="Dispatched", inference_pool="pool", model_name="", target_model_name="") == 1


async def test_a_saturated_pool_queues_and_releases_as_capacity_frees():
    fc = controller(sat=1.0)
    f = fc.submit("r1", "t", 0, 100)
    assert isinstance(f, asyncio.Future) and not f.done()
    assert fc.queued == 1
    assert sample(fc, "llm_d_epp_flow_control_queue_size", fairness_id="t", priority="0", inference_pool="pool",
                  model_name="", target_model_name="") == 1
    await asyncio.sleep(0.01)
    assert not f.done()                      # nothing frees capacity, nothing polls
    fc.test_dial.value = 0.9
    fc.kick()                                # a scrape or a completion
    assert (await f).outcome == O.DISPATCHED
    assert fc.queued == 0
    assert sample(fc, "llm_d_epp_flow_control_queue_size", fairness_id="t", priority="0", inference_pool="pool",
                  model_name="", target_model_name="") == 0


async def test_strict_priority_across_bands_then_fcfs_within():
    fc = controller({"priorityBands": [{"priority": 10}, {"priority": -1}]}, sat=1.0)
    futs = {}
    for name, prio in [("low1", -1), ("mid1", 0), ("high1", 10), ("low2", -1), ("high2", 10), ("mid2", 0)]:
        futs[name] = fc.submit(name, "t", prio, 10)
    done = order_of(futs)
    fc.test_dial.value = 0.0
    fc.kick()
    await asyncio.gather(*futs.values())
    assert done == ["high1", "high2", "mid1", "mid2", "low1", "low2"]


async def test_a_gated_higher_band_blocks_the_lower_ones_even_when_empty():
    """Head-of-line blocking as upstream: the cycle checks each band's ceiling before looking at it."""
    from epp.scheduling.framework import UsageLimitPolicy

    class Inverted(UsageLimitPolicy):
        type_name = "inverted"

        def compute_limits(self, saturation, priorities):
            return [0.5] + [1.0] * (len(priorities) - 1)   # the top band gates first

    fc = controller({"priorityBands": [{"priority": 10}], "usageLimitPolicyPluginRef": "inv"}, sat=0.7,
                    plugins={"inv": Inverted("inv")})
    f = fc.submit("r", "t", 0, 10)
    assert isinstance(f, asyncio.Future)
    fc.test_dial.value = 0.4
    fc.kick()
    assert (await f).dispatched


@pytest.mark.parametrize("policy, expect", [
    ("round-robin-fairness-policy", ["a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5"]),
    ("global-strict-fairness-policy", ["a0", "a1", "a2", "a3", "a4", "a5", "b0", "b1"]),
])
async def test_fairness_between_a_flooding_tenant_and_a_light_one(policy, expect):
    from epp.scheduling.config import create_default
    fc = controller({"defaultPriorityBand": {"fairnessPolicyRef": policy}}, sat=1.0,
                    plugins={policy: create_default(policy)})
    futs = {f"a{i}": fc.submit(f"a{i}", "tenant-a", 0, 10) for i in range(6)}
    futs.update({f"b{i}": fc.submit(f"b{i}", "tenant-b", 0, 10) for i in range(2)})
    done = order_of(futs)
    fc.test_dial.value = 0.0
    fc.kick()
    await asyncio.gather(*futs.values())
    assert done == expect


async def test_edf_orders_by_deadline_within_a_flow():
    from epp.scheduling.config import create_default
    edf = create_default("edf-ordering-policy")
    fc = controller({"defaultPriorityBand": {"orderingPolicyRef": "edf-ordering-policy"}}, sat=1.0,
                    plugins={"edf-ordering-policy": edf})
    futs = {n: fc.submit(n, "t", 0, 1) for n in ("x", "y", "z")}
    done = order_of(futs)
    fc.test_dial.value = 0.0
    fc.kick()
    await asyncio.gather(*futs.values())
    assert done == ["x", "y", "z"]   # the same TTL for all: EDF is FCFS


async def test_dispatch_drains_at_the_tick_pace_not_in_one_burst():
    fc = controller(sat=1.0)
    futs = [fc.submit(f"r{i}", "t", 0, 1) for i in range(5)]
    fc.test_dial.value = 0.0
    fc.kick()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert 1 <= sum(f.done() for f in futs) < 5     # one per cycle, cycles 1 ms apart
    await asyncio.gather(*futs)


async def test_capacity_overflow_is_rejected_at_once():
    fc = controller({"priorityBands": [{"priority": 0, "maxRequests": 2}]}, sat=1.0)
    a, b = fc.submit("a", "t", 0, 1), fc.submit("b", "t", 0, 1)
    assert isinstance(a, asyncio.Future) and isinstance(b, asyncio.Future)
    r = fc.submit("c", "t", 0, 1)
    assert r.outcome == O.REJECTED_CAPACITY
    # global byte cap
    fc2 = controller({"maxBytes": "1k"}, sat=1.0)
    assert isinstance(fc2.submit("a", "t", 0, 600), asyncio.Future)
    assert fc2.submit("b", "t", 0, 600).outcome == O.REJECTED_CAPACITY
    # a request bigger than the band's bytes is refused even with nothing queued
    fc3 = controller({"defaultPriorityBand": {"maxBytes": 100}}, sat=0.0)
    assert fc3.submit("big", "t", 0, 101).outcome == O.REJECTED_CAPACITY
    fc.stop(), fc2.stop()


async def test_capacity_overflow_with_no_endpoints_is_no_endpoints():
    fc = controller({"maxRequests": 1}, endpoints=[])
    f = fc.submit("a", "t", 0, 1)
    assert isinstance(f, asyncio.Future)
    assert fc.submit("b", "t", 0, 1).outcome == O.REJECTED_NO_ENDPOINTS
    fc.stop()


async def test_ttl_expiry_while_saturated():
    fc = controller({"defaultRequestTTL": "50ms"}, sat=1.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await fc.submit("a", "t", 0, 1)
    assert r.outcome == O.EVICTED_TTL and r.why == O.TTL_EXPIRED
    assert 0.04 <= loop.time() - t0 < 1.0
    assert fc.queued == 0


async def test_no_endpoint_budget_and_a_regime_change_restarts_the_clock():
    fc = controller({"defaultRequestTTL": "120ms", "noEndpointRequestTTL": "60ms"}, endpoints=[])
    r = await fc.submit("a", "t", 0, 1)
    assert r.outcome == O.EVICTED_NO_ENDPOINTS
    # queued while empty; endpoints appear (still saturated) before the no-endpoint budget is spent:
    # the request now has the full saturation budget from that moment
    fc.test_dial.value = 1.0
    loop = asyncio.get_running_loop()
    f = fc.submit("b", "t", 0, 1)
    await asyncio.sleep(0.04)
    fc.test_pool["eps"] = tuple(__import__("tests.unit.flow_helpers", fromlist=["pool"]).pool(1))
    t_change = loop.time()
    fc.kick()
    r = await f
    assert r.outcome == O.EVICTED_TTL
    assert loop.time() - t_change >= 0.11


async def test_zero_ttl_never_expires():
    fc = controller({"defaultRequestTTL": "0s"}, sat=1.0)
    f = fc.submit("a", "t", 0, 1)
    assert fc._sweep is None
    await asyncio.sleep(0.05)
    assert not f.done()
    fc.stop()


async def test_a_cancelled_wait_leaves_the_queue_at_once():
    fc = controller(sat=1.0)
    f1, f2 = fc.submit("a", "t", 0, 7), fc.submit("b", "t", 0, 9)
    task = asyncio.ensure_future(asyncio.shield(f1))   # noqa: F841 (keeps a waiter like a real stream)
    f1.cancel()
    await asyncio.sleep(0)
    assert fc.queued == 1 and fc.registry.bytes == 9
    assert sample(fc, "llm_d_epp_flow_control_requests_total", outcome="EvictedContextCancelled", priority="0",
                  inference_pool="pool") == 1
    fc.test_dial.value = 0.0
    fc.kick()
    assert (await f2).dispatched


async def test_shutdown_ends_every_queued_request_and_refuses_new_ones():
    fc = controller(sat=1.0)
    futs = [fc.submit(f"r{i}", f"t{i % 3}", 0, 1) for i in range(10)]
    fc.stop()
    results = await asyncio.gather(*futs)
    assert {r.outcome for r in results} == {O.EVICTED_OTHER} and all(r.why == O.NOT_RUNNING for r in results)
    r = fc.submit("late", "t", 0, 1)
    assert r.outcome == O.REJECTED_OTHER and r.why == O.NOT_RUNNING
    assert fc.queued == 0


async def test_priority_holdback_gates_low_bands_first():
    from epp.scheduling.config import create_default, instantiate
    hold = instantiate("priority-holdback-policy", "hold", {"minCeiling": 0.5}, "test")
    fc = controller({"priorityBands": [{"priority": 1}, {"priority": 0}], "usageLimitPolicyPluginRef": "hold"},
                    sat=0.6, plugins={"hold": hold})
    assert fc.submit("hi", "t", 1, 1).dispatched          # ceiling 1.0
    low = fc.submit("lo", "t", 0, 1)                      # ceiling 0.5 < 0.6
    assert isinstance(low, asyncio.Future)
    fc.test_dial.value = 0.4
    fc.kick()
    assert (await low).dispatched
    assert create_default("static-usage-limit-policy").compute_limits(0.3, [1, 0]) == [1.0, 1.0]


async def test_bands_are_provisioned_for_objectives_and_unknown_priorities_fall_back_to_zero():
    fc = controller({"defaultNegativePriorityBand": {"maxRequests": 1}}, sat=1.0)
    fc.set_desired_priorities({5, -3})
    assert fc.registry.priorities == [5, 0, -3]
    assert fc.registry.bands[-3].cfg.max_requests == 1 and fc.registry.bands[5].cfg.max_requests == 5000
    f = fc.submit("x", "t", 7, 1)                          # no objective has 7: band 0
    assert fc.registry.bands[0].len == 1
    assert isinstance(fc.submit("s1", "t", -3, 1), asyncio.Future)
    assert fc.submit("s2", "t", -3, 1).outcome == O.REJECTED_CAPACITY   # the small sheddable band sheds
    fc.set_desired_priorities(set())                       # band 5 idle and no longer wanted: gone
    assert 5 not in fc.registry.bands and -3 in fc.registry.bands      # -3 still holds a request
    fc.stop()
    assert (await f).outcome == O.EVICTED_OTHER


async def test_saturation_is_per_stage_and_the_effective_value_is_the_larger():
    from epp.datalayer.endpoint import Endpoint
    from epp.scheduling.framework import SaturationDetector

    class ByRole(SaturationDetector):
        name = "by-role"

        def saturation(self, eps):
            return max((0.9 if ep.labels.get("llm-d.ai/role") == "prefill" else 0.2) for ep in eps) if eps else 1.0

    eps = [Endpoint("p", "10.0.0.1:1", {"llm-d.ai/role": "prefill"}), Endpoint("d", "10.0.0.2:1", {"llm-d.ai/role": "decode"}),
           Endpoint("e", "10.0.0.3:1", {"llm-d.ai/role": "encode"})]
    fc = controller(endpoints=eps)
    fc.detector = ByRole()
    assert fc._saturation() == 0.9
    assert sample(fc, "llm_d_epp_flow_control_pool_saturation", inference_pool="pool", stage="decode") == 0.2
    assert sample(fc, "llm_d_epp_flow_control_pool_saturation", inference_pool="pool", stage="prefill") == 0.9


async def test_eviction_revokes_the_latest_sheddable_request_for_a_waiting_band():
    fc = controller({"enableEviction": True, "priorityBands": [{"priority": -1}]}, sat=0.0, grace=0.05)
    evicted = []
    for key, prio in [("batch-old", -1), ("batch-new", -1), ("normal", 0)]:
        assert fc.submit(key, "t", prio, 1).dispatched
        fc.track(key, prio, lambda k=key: evicted.append(k))
    fc.test_dial.value = 1.0
    waiting = fc.submit("urgent", "t", 0, 1)
    assert isinstance(waiting, asyncio.Future)
    await asyncio.sleep(0)
    # saturation 1.0 over 3 in flight: a credit of 1/3 each; target 0 -> one revocation, lowest
    # priority first and, within it, the most recently dispatched
    assert evicted == ["batch-new"]
    assert sample(fc, "llm_d_epp_flow_control_revocations_issued_total", priority="0", inference_pool="pool") == 1
    fc.kick()
    await asyncio.sleep(0.005)
    assert evicted == ["batch-new"]      # unconfirmed: no second decision
    fc.untrack("batch-new")              # its stream ended
    assert sample(fc, "llm_d_epp_flow_control_revocations_total", outcome="confirmed", inference_pool="pool") == 1
    fc.kick()
    await asyncio.sleep(0.005)
    assert evicted == ["batch-new"]      # cooling for the grace
    await asyncio.sleep(0.06)
    fc.kick()
    await asyncio.sleep(0.005)
    assert evicted == ["batch-new", "batch-old"]
    fc.untrack("batch-old")
    fc.test_dial.value = 0.5
    fc.kick()
    assert (await waiting).dispatched
    # a non-sheddable request is never a victim
    fc.test_dial.value = 1.0
    w2 = fc.submit("urgent2", "t", 0, 1)
    await asyncio.sleep(0.1)
    fc.kick()
    await asyncio.sleep(0.005)
    assert evicted == ["batch-new", "batch-old"]
    fc.stop()
    await w2


async def test_ten_thousand_queued_requests_cost_bounded_memory_and_all_end():
    fc = controller({"priorityBands": [{"priority": 0, "maxRequests": 20000}]}, sat=1.0)
    fc.submit("warm", "t", 0, 1).cancel()
    await asyncio.sleep(0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    futs = [fc.submit(f"r{i}", f"tenant-{i % 50}", 0, 1000) for i in range(10_000)]
    queued = tracemalloc.get_traced_memory()[0] - before
    assert fc.queued == 10_000
    assert queued / 10_000 < 1500, f"{queued / 10_000:.0f} bytes per queued request"
    for f in futs[::2]:                   # half the clients leave
        f.cancel()
    await asyncio.sleep(0)
    assert fc.queued == 5_000
    fc.test_dial.value = 0.0
    fc.kick()
    await asyncio.sleep(0.02)
    fc.stop()
    outcomes = set()
    for f in futs[1::2]:
        outcomes.add((await f).outcome)
    assert outcomes == {O.DISPATCHED, O.EVICTED_OTHER}
    del futs, f
    await asyncio.sleep(0)               # the futures' done callbacks run
    gc.collect()
    left = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert fc.queued == 0 and not fc._fifo
    assert left < 0.1 * queued, f"{left} bytes left of {queued}"


async def test_a_release_settles_before_the_next_one():
    """Released requests are scheduled a loop turn later: until request control reports one, the detector
    has not counted it, so no cycle (not even a new request's enqueue) may release on that reading."""
    fc = controller(sat=1.0)
    a, b = fc.submit("a", "t", 0, 1), fc.submit("b", "t", 0, 1)
    fc.test_dial.value = 0.0
    fc.kick()
    await asyncio.sleep(0)
    assert a.done() and not b.done()
    c = fc.submit("c", "t", 0, 1)                 # its enqueue runs a cycle: it must not release b
    assert isinstance(c, asyncio.Future) and not b.done()
    fc.settled()                                  # a was scheduled
    await settle(fc, b.done)
    await asyncio.sleep(0.02)                     # b is never reported: after SETTLE_MAX c goes anyway
    assert c.done()


async def test_a_scraped_metrics_reading_is_reused_until_new_metrics_or_staleness():
    from epp.datalayer.endpoint import Metrics, now
    from epp.scheduling.config import instantiate
    det = instantiate("utilization-detector", "u", {"metricsStalenessThreshold": "50ms"}, "t")
    eps = __import__("tests.unit.flow_helpers", fromlist=["pool"]).pool(2)
    for ep in eps:
        ep.metrics = Metrics(waiting=2, updated=now())
    fc = controller(endpoints=eps)
    fc.detector = det
    calls = []
    real = det.saturation
    det.saturation = lambda e: calls.append(1) or real(e)
    assert fc._saturation() == 0.4 and fc._saturation() == 0.4 and len(calls) == 1
    for ep in eps:
        ep.metrics = Metrics(waiting=5, updated=now())   # a scrape
    fc.metrics_changed()
    assert fc._saturation() == 1.0 and len(calls) == 2
    await asyncio.sleep(0.06)                             # the metrics turn stale: read again (fail closed)
    assert fc._saturation() == 1.0 and len(calls) == 3 and det.stale_endpoints == 2
