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

# cluster-scoped, create only: the metrics server's access checks (--metrics-endpoint-auth, on by default)
CLUSTER = {
    ("authentication.k8s.io", "tokenreviews"): ("create",),
    ("authorization.k8s.io", "subjectaccessreviews"): ("create",),
}
