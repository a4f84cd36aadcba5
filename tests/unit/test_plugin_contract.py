"""The plugin contract (epp/scheduling/framework.py) is the whole contract: a plugin that implements a
hook method without deriving from the class that declares it would be silently ignored by the
framework, which discovers hooks with isinstance only."""
import inspect

from epp.scheduling import framework as fw
from epp.scheduling.plugins import load_all

# every hook class of the contract, and the methods it declares
HOOKS = [fw.Filter, fw.Scorer, fw.Picker, fw.ProfileHandler, fw.PrepareRequest, fw.PreRequest, fw.ResponseHeaders,
         fw.ResponseFirstChunk, fw.ResponseComplete, fw.BindsPlugins, fw.HasSubPlugins, fw.EndpointLifecycle,
         fw.BackgroundTask, fw.PrefixMatchProducer, fw.PrefixMatchConsumer, fw.IndexSize, fw.SaturationDetector,
         fw.StateDumper, fw.KVEventStatus, fw.InFlightLoad, fw.InFlightLoadConsumer, fw.TokenizedPromptConsumer,
         fw.Parser, fw.DataSource, fw.DataExtractor, fw.Discovery, fw.Admitter, fw.OrderingPolicy, fw.FairnessPolicy,
         fw.UsageLimitPolicy]


def _declared(cls) -> set[str]:
    return {n for n, v in vars(cls).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}


def test_every_hook_class_is_listed_here():
    found = {c for _, c in inspect.getmembers(fw, inspect.isclass)
             if c.__module__ == fw.__name__ and c is not fw.Plugin}
    assert found == set(HOOKS)


def test_plugins_that_implement_a_hook_method_derive_from_its_class():
    load_all()
    owners = {m: hook for hook in HOOKS for m in _declared(hook)}
    bad = []
    for name, cls in sorted(fw.REGISTRY.items()):
        for method, hook in owners.items():
            if hasattr(cls, method) and not issubclass(cls, hook):
                bad.append(f"{name} ({cls.__name__}) has {method}() but is not a {hook.__name__}")
    assert not bad, "\n".join(bad)


def test_the_framework_finds_hooks_on_sub_plugins_at_any_depth():
    """handler -> its decider -> the decider's own prefix producer: the producer's hooks are found."""
    from epp.scheduling.config import load
    cfg = load("""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: 16}
- type: disagg-profile-handler
  parameters: {deciders: {prefill: prefix-based-pd-decider}}
- type: queue-scorer
schedulingProfiles:
- name: decode
  plugins: [{pluginRef: queue-scorer}]
- name: prefill
  plugins: [{pluginRef: queue-scorer}]
""")
    from epp.scheduling.scheduler import Scheduler
    s = Scheduler(cfg.profiles, handler=cfg.handler)        # no extra plugins: only what the handler owns
    own = cfg.plugins["prefix-based-pd-decider"].sub_plugins()
    assert len(own) == 1 and own[0] in s.plugins and own[0] in s._pre_request and own[0] in s._lifecycle
    assert s.index_size() == 0


def test_a_precise_scorer_binds_and_brings_its_producers_background_work():
    from epp.scheduling.config import load
    from epp.scheduling.scheduler import from_config
    cfg = load("""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-scorer
  parameters: {kvEventsConfig: {zmqEndpoint: "tcp://127.0.0.1:5557"}}
""")
    s = from_config(cfg)
    jobs = s.background_jobs(None)
    for _, job in jobs:
        job.close()                                          # coroutines never started
    names = [name for name, _ in jobs]
    assert names == ["plugin precise-prefix-cache-scorer/producer"]
