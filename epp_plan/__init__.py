"""epp-plan: capacity planning with the real scheduler over simulated pools, in virtual time.

The one package allowed to import both `epp` (its scheduling config, plugins and prefix indexes) and
`vllm_sim` (its engine): a discrete-event simulation runs N engines and epp's scheduling on one virtual
clock, with the stack's delays (metric scrapes, KV events, HTTP hops, the P/D sidecar and KV pulls) as
events, so a workload's minutes run in seconds.
"""
