"""The Kubernetes API access epp needs, in one place: the manifests' Role must grant exactly this
(a test compares them), and the code's calls are the only users of it."""

# (api group, resource) -> verbs, all in the pool's namespace
NAMESPACED = {
    ("", "pods"): ("list", "watch"),
    ("inference.networking.k8s.io", "inferencepools"): ("list", "watch"),
    ("inference.networking.x-k8s.io", "inferenceobjectives"): ("list", "watch"),
    ("inference.networking.x-k8s.io", "inferencemodelrewrites"): ("list", "watch"),
    ("coordination.k8s.io", "leases"): ("get", "create", "update"),   # only with --ha-enable-leader-election
}
