"""Flow control (feature gate `flowControl`): the EPP's admission queue, between request control and
scheduling, as llm-d router runs it.

A request enters after parsing and priority lookup. While the pool is not saturated it passes at once
(synchronously, no task). Otherwise it waits in its flow's queue (a flow = fairness id x priority) and
a dispatch cycle releases one request at a time as capacity frees: the highest priority band first
(strict), a flow of the band by the band's fairness policy, the flow's head item by its ordering
policy. Every wait is bounded here (TTL sweep, shutdown), and a request whose client left leaves its
queue at once. Outcomes are QueueOutcome strings (outcomes.py); request control turns them into
HTTP answers.

Modules: config (the `flowControl:` section), queues (items, flow queues, bands), registry (bands,
capacity, garbage collection), controller (admission, dispatch, expiry, shutdown), stages (pool
saturation per P/D stage), eviction (in-flight eviction of sheddable requests), metrics.
Policies are plugins used through the framework's classes only (scheduling/framework.py).
"""
