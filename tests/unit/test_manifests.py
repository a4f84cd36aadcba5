"""The Kubernetes manifests (manifests/): every kustomization renders with `kubectl kustomize`, every
object matches the schema of its kind (tests/unit/manifest_schemas), and the objects agree with each
other and with the code: the EPP's flags parse with epp's own parser, its config loads with epp's loader,
its Role grants exactly epp/datalayer/k8s/rbac.py, the pool, Service, route and probes point at the
same names and ports, the model servers carry the labels, ports and vLLM settings the EPP expects.

Needs `kubectl` for rendering. The test command (hack/test.sh) sets EPP_REQUIRE_KUBECTL=1, so there its
absence fails every rendering test with how to install it; a bare pytest run without kubectl skips them
with that reason instead. Nothing talks to a cluster.
"""
from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

from epp.datalayer.k8s import rbac
from epp.flags import build_parser, parse as parse_epp_flags
from epp.scheduling.config import load as load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFESTS = os.path.join(ROOT, "manifests")
SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifest_schemas")
KUBECTL = shutil.which("kubectl")
NO_KUBECTL = ("kubectl not on PATH: `kubectl kustomize` renders the manifests. Install it: Debian/Ubuntu "
              "`apt-get install kubectl` (or kubernetes-client), or the binary from "
              "https://kubernetes.io/docs/tasks/tools/")

POOL = "vllm-llama3-8b-instruct"
EPP = "vllm-llama3-8b-instruct-epp"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
EPP_IMAGE = "epp"           # the repo's image (Dockerfile): epp, vllm-sim, epp-sidecar
NAMESPACED_KINDS = {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
                    "InferencePool", "HTTPRoute", "Gateway", "DestinationRule"}
CLUSTER_KINDS = {"GatewayClass"}

# epp flags the manifests may use before epp's parser knows them. --endpoint-selector,
# --endpoint-target-ports and --ha-enable-leader-election landed with Kubernetes discovery, so nothing
# is pending any more; a flag listed here is tolerated only while build_parser() lacks it.
PENDING_FLAGS: set[str] = set()

# the config files the manifests carry as byte-for-byte copies (kustomize reads only below its root)
CONFIG_COPIES = {
    "manifests/base/default.yaml": "config/default.yaml",
    "manifests/components/pd/pd.yaml": "config/pd.yaml",
    "manifests/components/precise-prefix/precise.yaml": "config/precise.yaml",
    "manifests/components/precise-prefix-render/precise-render.yaml": "config/precise-render.yaml",
}

# compositions users build from the pieces (docs/deploy.md): gateway overlay + components (+ servers)
COMBOS = {
    "combo:istio+ha+pd+vllm-pd": {
        "resources": ["overlays/istio", "model-servers/vllm-pd"],
        "components": ["components/ha", "components/pd"]},
    "combo:kgateway+precise+sim": {
        "namespace": "inference",
        "resources": ["overlays/kgateway", "model-servers/sim-aggregated"],
        "components": ["components/precise-prefix", "components/sim-tokenizer"]},
    "combo:envoy-gateway+ha+precise+vllm": {
        "resources": ["overlays/envoy-gateway", "model-servers/vllm-aggregated"],
        "components": ["components/ha", "components/precise-prefix"]},
    "combo:pd+sim-pd-namespaced": {
        "namespace": "llm",
        "resources": ["overlays/pd", "model-servers/sim-pd"]},
}


# ---- discovery and rendering --------------------------------------------------------------------------

def _kustomizations() -> dict[str, str]:
    """manifests-relative dir -> kind (Kustomization or Component)."""
    out = {}
    for dirpath, _, files in os.walk(MANIFESTS):
        if "kustomization.yaml" in files:
            with open(os.path.join(dirpath, "kustomization.yaml")) as f:
                doc = yaml.safe_load(f) or {}
            out[os.path.relpath(dirpath, MANIFESTS)] = doc.get("kind", "Kustomization")
    return dict(sorted(out.items()))


KUSTOMIZATIONS = _kustomizations()
BUILDABLE = [d for d, k in KUSTOMIZATIONS.items() if k == "Kustomization"]
COMPONENTS = [d for d, k in KUSTOMIZATIONS.items() if k == "Component"]
RENDERS = BUILDABLE + list(COMBOS)


def _kubectl_kustomize(path: str) -> list[dict]:
    r = subprocess.run([KUBECTL, "kustomize", path], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{r.stderr.strip()}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict] | AssertionError]:
    if KUBECTL is None:
        if os.environ.get("EPP_REQUIRE_KUBECTL"):   # the test command: a missing kubectl fails, never skips
            pytest.fail(f"{NO_KUBECTL} (EPP_REQUIRE_KUBECTL is set)", pytrace=False)
        pytest.skip(NO_KUBECTL)
    tmp = tempfile.mkdtemp(prefix="epp-manifests-")
    jobs = {d: os.path.join(MANIFESTS, d) for d in BUILDABLE}
    for name, spec in COMBOS.items():
        d = os.path.join(tmp, re.sub(r"[^a-z0-9]+", "-", name))
        os.makedirs(d)
        doc = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
        if "namespace" in spec:
            doc["namespace"] = spec["namespace"]
        for key in ("resources", "components"):
            if key in spec:
                doc[key] = [os.path.relpath(os.path.join(MANIFESTS, p), d) for p in spec[key]]
        with open(os.path.join(d, "kustomization.yaml"), "w") as f:
            yaml.safe_dump(doc, f)
        jobs[name] = d
    out: dict = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            futures = {pool.submit(_kubectl_kustomize, path): name for name, path in jobs.items()}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    out[futures[fut]] = fut.result()
                except AssertionError as e:
                    out[futures[fut]] = e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _docs(rendered, name) -> list[dict]:
    docs = rendered[name]
    if isinstance(docs, AssertionError):
        raise docs
    assert docs, f"{name}: renders nothing"
    return docs


def _of(docs, kind) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def _one(docs, kind, name=None) -> dict:
    found = [d for d in _of(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}{f' {name}' if name else ''}, found {len(found)}"
    return found[0]


def _epp_deployment(docs) -> dict | None:
    for d in _of(docs, "Deployment"):
        if any(c["name"] == "epp" for c in d["spec"]["template"]["spec"]["containers"]):
            return d
    return None


def _container(dep, name, init=False) -> dict:
    key = "initContainers" if init else "containers"
    found = [c for c in dep["spec"]["template"]["spec"].get(key, []) if c["name"] == name]
    assert len(found) == 1, f"{dep['metadata']['name']}: no {key[:-1]} {name!r}"
    return found[0]


def _all_containers(dep):
    spec = dep["spec"]["template"]["spec"]
    return [(c, True) for c in spec.get("initContainers", [])] + [(c, False) for c in spec["containers"]]


def _image_name(image: str) -> str:
    return image.rsplit("/", 1)[-1].split(":", 1)[0]


def _env(container) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _flag_value(args: list[str], flag: str) -> str | None:
    """Value of --flag given as `--flag=v` or `--flag v` (last one wins)."""
    val = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            val = args[i + 1]
        elif a.startswith(flag + "="):
            val = a.split("=", 1)[1]
    return val


def _labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---- a small JSON Schema validator (the subset the schemas use), or jsonschema when installed ---------

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float)}


def _is_type(v, t: str) -> bool:
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "null":
        return v is None
    return isinstance(v, _TYPES[t])


def _validate(v, s: dict, root: dict, path: str = "$") -> list[str]:
    if "$ref" in s:
        ref = s["$ref"]
        assert ref.startswith("#/$defs/"), ref
        return _validate(v, root["$defs"][ref[len("#/$defs/"):]], root, path)
    errs: list[str] = []
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_is_type(v, t) for t in types):
            return [f"{path}: {v!r} is not of type {'/'.join(types)}"]
    if "const" in s and v != s["const"]:
        errs.append(f"{path}: {v!r} is not {s['const']!r}")
    if "enum" in s and v not in s["enum"]:
        errs.append(f"{path}: {v!r} is not one of {s['enum']}")
    if isinstance(v, str):
        if "pattern" in s and not re.search(s["pattern"], v):
            errs.append(f"{path}: {v!r} does not match {s['pattern']!r}")
        if "maxLength" in s and len(v) > s["maxLength"]:
            errs.append(f"{path}: longer than {s['maxLength']}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in s and v < s["minimum"]:
            errs.append(f"{path}: {v} < {s['minimum']}")
        if "maximum" in s and v > s["maximum"]:
            errs.append(f"{path}: {v} > {s['maximum']}")
    if isinstance(v, dict):
        for k in s.get("required", []):
            if k not in v:
                errs.append(f"{path}: missing {k!r}")
        if "minProperties" in s and len(v) < s["minProperties"]:
            errs.append(f"{path}: fewer than {s['minProperties']} properties")
        props = s.get("properties", {})
        for k, sub in v.items():
            if k in props:
                errs += _validate(sub, props[k], root, f"{path}.{k}")
            elif s.get("additionalProperties") is False:
                errs.append(f"{path}: unexpected property {k!r}")
            elif isinstance(s.get("additionalProperties"), dict):
                errs += _validate(sub, s["additionalProperties"], root, f"{path}.{k}")
    if isinstance(v, list):
        if "minItems" in s and len(v) < s["minItems"]:
            errs.append(f"{path}: fewer than {s['minItems']} items")
        if "maxItems" in s and len(v) > s["maxItems"]:
            errs.append(f"{path}: more than {s['maxItems']} items")
        if "items" in s:
            for i, item in enumerate(v):
                errs += _validate(item, s["items"], root, f"{path}[{i}]")
    if "not" in s and not _validate(v, s["not"], root, path):
        errs.append(f"{path}: must not match {s['not']}")
    if "anyOf" in s and all(_validate(v, sub, root, path) for sub in s["anyOf"]):
        errs.append(f"{path}: matches none of anyOf")
    if "oneOf" in s:
        ok = sum(1 for sub in s["oneOf"] if not _validate(v, sub, root, path))
        if ok != 1:
            errs.append(f"{path}: matches {ok} of oneOf (exactly one wanted)")
    return errs


def _load_schemas() -> dict[str, dict]:
    with open(os.path.join(SCHEMAS, "meta.yaml")) as f:
        shared = yaml.safe_load(f)
    out = {}
    for fn in sorted(os.listdir(SCHEMAS)):
        if fn.endswith(".schema.yaml"):
            with open(os.path.join(SCHEMAS, fn)) as f:
                s = yaml.safe_load(f)
            s["$defs"] = {**copy.deepcopy(shared), **s.get("$defs", {})}
            out[fn[: -len(".schema.yaml")]] = s
    return out


SCHEMA_BY_KIND = _load_schemas()


def _schema_errors(doc: dict) -> list[str]:
    schema = SCHEMA_BY_KIND.get(doc.get("kind", "").lower())
    if schema is None:
        return [f"no schema for kind {doc.get('kind')!r} in tests/unit/manifest_schemas"]
    try:
        import jsonschema  # optional: the built-in validator covers the same subset
    except ImportError:
        return _validate(doc, schema, schema)
    v = jsonschema.Draft202012Validator(schema)
    return [f"$.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


# ---- tests that need no rendering ---------------------------------------------------------------------

@pytest.mark.parametrize("copy_path,original", sorted(CONFIG_COPIES.items()))
def test_config_copies_match_config_dir(copy_path, original):
    with open(os.path.join(ROOT, copy_path), "rb") as a, open(os.path.join(ROOT, original), "rb") as b:
        assert a.read() == b.read(), f"{copy_path} drifted from {original}: copy it again"


def test_schema_validator_catches_mistakes():
    s = SCHEMA_BY_KIND["inferencepool"]
    good = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8000}],
                     "endpointPickerRef": {"name": "e", "port": {"number": 9002}}}}
    assert _validate(good, s, s) == []
    bad = copy.deepcopy(good)
    bad["spec"]["targetPorts"] = [{"number": 0}] * 9
    bad["spec"]["extensionRef"] = {}
    del bad["metadata"]["namespace"]
    errs = " ".join(_validate(bad, s, s))
    assert "more than 8" in errs and "unexpected property 'extensionRef'" in errs and "namespace" in errs


def test_every_component_is_used_by_an_overlay():
    used = set()
    for d, kind in KUSTOMIZATIONS.items():
        if kind == "Kustomization":
            with open(os.path.join(MANIFESTS, d, "kustomization.yaml")) as f:
                for c in (yaml.safe_load(f) or {}).get("components", []):
                    used.add(os.path.normpath(os.path.join(d, c)))
    for spec in COMBOS.values():
        used.update(os.path.normpath(c) for c in spec.get("components", []))
    assert set(COMPONENTS) <= used, f"components nobody renders: {sorted(set(COMPONENTS) - used)}"


def test_expected_layout():
    want = {"base", "overlays/envoy-gateway", "overlays/envoy-gateway/gatewayclass", "overlays/istio",
            "overlays/kgateway", "overlays/ha", "overlays/precise-prefix", "overlays/pd",
            "model-servers/vllm-aggregated", "model-servers/vllm-pd", "model-servers/vllm-pd-aws-efa",
            "model-servers/sim-aggregated", "model-servers/sim-pd"}
    assert want <= set(BUILDABLE), sorted(want - set(BUILDABLE))
    assert {"components/ha", "components/pd", "components/precise-prefix", "components/sim-tokenizer"} <= set(COMPONENTS)


# ---- every render ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RENDERS)
def test_objects_match_schemas(rendered, name):
    problems = []
    for doc in _docs(rendered, name):
        for e in _schema_errors(doc):
            problems.append(f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}: {e}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", RENDERS)
def test_namespaces(rendered, name):
    docs = _docs(rendered, name)
    want = COMBOS.get(name, {}).get("namespace", "default")
    for d in docs:
        kind, meta = d["kind"], d["metadata"]
        if kind in CLUSTER_KINDS:
            assert "namespace" not in meta, f"{kind} {meta['name']} is cluster-scoped"
        else:
            assert kind in NAMESPACED_KINDS, f"{kind}: say whether it is namespaced"
            assert meta.get("namespace") == want, f"{kind} {meta['name']}: namespace {meta.get('namespace')}"
    for rb in _of(docs, "RoleBinding"):
        assert all(s["namespace"] == rb["metadata"]["namespace"] for s in rb["subjects"])
        assert any(r["metadata"]["name"] == rb["roleRef"]["name"] for r in _of(docs, "Role"))
        for s in rb["subjects"]:
            _one(docs, "ServiceAccount", s["name"])
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects"


@pytest.mark.parametrize("name", RENDERS)
def test_pods_are_locked_down(rendered, name):
    """The repo's image (epp, vllm-sim, epp-sidecar) runs restricted; everything declares resources."""
    for dep in _of(_docs(rendered, name), "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c, is_init in _all_containers(dep):
            where = f"{dep['metadata']['name']}/{c['name']}"
            res = c["resources"]
            assert res["requests"].get("memory") and res["limits"].get("memory"), where
            if _image_name(c["image"]) != EPP_IMAGE:
                continue
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp must be an emptyDir"
            if is_init and c.get("restartPolicy") == "Always":
                assert c.get("readinessProbe"), f"{where}: a native sidecar should say when it is ready"


# ---- the EPP -----------------------------------------------------------------------------------------

def _epp_renders():
    return [n for n in RENDERS if not n.startswith("model-servers/") and n != "overlays/envoy-gateway/gatewayclass"]


@pytest.mark.parametrize("name", _epp_renders())
def test_epp_deployment(rendered, name):
    docs = _docs(rendered, name)
    dep = _epp_deployment(docs)
    assert dep is not None, "no EPP Deployment"
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep, "epp")
    assert _image_name(c["image"]) == EPP_IMAGE and c.get("command") is None, "runs the image's entry point, epp"
    args = c["args"]

    # every flag is one epp knows, and the whole command line parses as epp would parse it
    known = {o for a in build_parser()._actions for o in a.option_strings}
    strip = set()
    for a in args:
        flag = a.split("=", 1)[0]
        if flag.startswith("-") and flag not in known:
            assert flag in PENDING_FLAGS, f"epp does not know {flag}"
            strip.add(a)
    try:
        ns = parse_epp_flags([a for a in args if a not in strip])
    except SystemExit:
        pytest.fail(f"epp rejects its arguments {args}")
    assert ns.secure_serving is True, "gateways dial the EPP over TLS"

    # the pool it discovers is the pool in the same render, and its ports are the ones wired elsewhere
    ip = _one(docs, "InferencePool")
    assert ns.pool_name == ip["metadata"]["name"] == POOL
    assert ns.pool_group == ip["apiVersion"].split("/")[0]
    ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
    assert ports["grpc"] == ns.grpc_port and ports["grpc-health"] == ns.grpc_health_port
    assert ports["metrics"] == ns.metrics_port
    assert pod["serviceAccountName"] == EPP

    # probes: gRPC health on the health port, with the services epp serves
    assert c["livenessProbe"]["grpc"] == {"port": ns.grpc_health_port, "service": "liveness"}
    assert c["readinessProbe"]["grpc"] == {"port": ns.grpc_health_port, "service": "readiness"}

    # NAMESPACE (pool namespace) and POD_NAME (lease identity) from the downward API
    env = _env(c)
    assert env["NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "--pool-namespace" not in " ".join(args), "the namespace comes from $NAMESPACE"

    # --config-file is the config.yaml of a ConfigMap volume, and that ConfigMap is in the render
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    cfg_dir, cfg_file = os.path.split(ns.config_file)
    assert cfg_file == "config.yaml" and mounts[cfg_dir].get("readOnly") is True
    vol = next(v for v in pod["volumes"] if v["name"] == mounts[cfg_dir]["name"])
    _one(docs, "ConfigMap", vol["configMap"]["name"])

    # HA: leader election iff several replicas (a single replica needs no lease)
    assert ns.ha_enable_leader_election == (dep["spec"]["replicas"] > 1)


def _load_epp_config(text: str, source: str):
    """Loads with epp's own loader; a token-producer's local tokenizer path is pointed at the simulator's
    tokenizer (the deployed path only exists in the pod)."""
    from vllm_sim.tokenizer import DEFAULT_DIR
    doc = yaml.safe_load(text)
    for p in doc.get("plugins", []):
        local = (p.get("parameters") or {}).get("local")
        if p.get("type") == "token-producer" and local:
            text = text.replace(local["path"], DEFAULT_DIR)
    return load_config(text, source)


@pytest.mark.parametrize("name", _epp_renders())
def test_epp_config_loads(rendered, name):
    docs = _docs(rendered, name)
    cm = _one(docs, "ConfigMap")
    text = cm["data"]["config.yaml"]
    _load_epp_config(text, f"{name}: ConfigMap {cm['metadata']['name']}")
    # the generated name carries a content hash (config edits roll the Deployment)
    assert re.fullmatch(r"vllm-llama3-8b-instruct-epp-config-[a-z0-9]{10}", cm["metadata"]["name"])
    cfg = yaml.safe_load(text)
    types = {p["type"] for p in cfg["plugins"]}
    c = _container(_epp_deployment(docs), "epp")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    if "precise-prefix-cache-producer" in types:
        # KV events: the EPP binds the endpoint of its config; the Service and the container expose it
        p = next(p for p in cfg["plugins"] if p["type"] == "precise-prefix-cache-producer")
        port = int(p["parameters"]["kvEventsConfig"]["zmqEndpoint"].rsplit(":", 1)[1])
        assert any(cp["containerPort"] == port for cp in c["ports"])
        svc = _one(docs, "Service", EPP)
        assert any(sp["port"] == port for sp in svc["spec"]["ports"])
        tp = next(p for p in cfg["plugins"] if p["type"] == "token-producer")["parameters"]
        if "vllm" in tp:
            # the renderer runs in the EPP pod, on the loopback port the config names, and is probed
            port = int(tp["vllm"]["url"].rsplit(":", 1)[1])
            r = _container(_epp_deployment(docs), "vllm-render")
            assert f"--port={port}" in r["args"] and "--host=127.0.0.1" in r["args"], r["args"]
            assert r["readinessProbe"]["httpGet"]["port"] == port and tp["modelName"] in r["args"]
            return
        # the tokenizer directory is a mounted volume the init container fills
        tok = tp["local"]["path"]
        assert tok in mounts, f"{tok} is not mounted"
        init = _container(_epp_deployment(docs), "tokenizer", init=True)
        assert any(m["mountPath"] == tok and not m.get("readOnly") for m in init["volumeMounts"])
        assert _image_name(init["image"]) == EPP_IMAGE
        script = init["command"][-1]
        compile(script, "tokenizer init", "exec")
        if "sim-tokenizer" in name or name.endswith("+sim"):
            assert "vllm_sim.tokenizer" in script and not init.get("env")
        else:
            assert "hf_hub_download" in script
            assert _env(init)["TOKENIZER_MODEL"]["value"] == MODEL
    if {"prefill-filter", "decode-filter"} <= types:
        assert "disagg-profile-handler" in types or "pd-profile-handler" in types


@pytest.mark.parametrize("name", _epp_renders())
def test_epp_role_is_exactly_rbac_py(rendered, name):
    docs = _docs(rendered, name)
    dep = _epp_deployment(docs)
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = [rb for rb in _of(docs, "RoleBinding") if any(s["name"] == sa for s in rb["subjects"])]
    assert len(bindings) == 1
    role = _one(docs, "Role", bindings[0]["roleRef"]["name"])
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                granted.setdefault((g, r), set()).update(rule["verbs"])
    want = {k: set(v) for k, v in rbac.NAMESPACED.items()}
    if "--ha-enable-leader-election" not in _container(dep, "epp")["args"]:
        del want[("coordination.k8s.io", "leases")]      # only leader election uses the Lease
    assert granted == want
    assert not _of(docs, "ClusterRole") and not _of(docs, "ClusterRoleBinding")


@pytest.mark.parametrize("name", _epp_renders())
def test_pool_service_and_route_agree(rendered, name):
    docs = _docs(rendered, name)
    dep = _epp_deployment(docs)
    c = _container(dep, "epp")
    ns = parse_epp_flags([a for a in c["args"]])
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    ip = _one(docs, "InferencePool", POOL)
    spec = ip["spec"]

    # the Service selects the EPP pods and maps 9002/9003/9090 onto their named container ports
    svc = _one(docs, "Service", spec["endpointPickerRef"]["name"])
    assert _labels_match(svc["spec"]["selector"], pod_labels)
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    by_port = {}
    for p in svc["spec"]["ports"]:
        tp = p["targetPort"]
        by_port[p["port"]] = (named[tp] if isinstance(tp, str) else tp, p)
    assert by_port[spec["endpointPickerRef"]["port"]["number"]][0] == ns.grpc_port
    ext = by_port[spec["endpointPickerRef"]["port"]["number"]][1]
    assert ext["appProtocol"] == "http2", "ext_proc is gRPC: HTTP/2 (over TLS)"
    assert by_port[9003][0] == ns.grpc_health_port and by_port[9090][0] == ns.metrics_port

    # the pool: v1 fields, model-server pods on 8000, never the EPP's own pods
    assert spec["selector"]["matchLabels"] == {"app": POOL}
    assert [p["number"] for p in spec["targetPorts"]] == [8000]
    assert spec["endpointPickerRef"].get("kind", "Service") == "Service"
    assert spec["endpointPickerRef"].get("failureMode", "FailClose") in ("FailOpen", "FailClose")
    assert not _labels_match(spec["selector"]["matchLabels"], pod_labels)

    # the route sends to the pool and hangs off the Gateway of the overlay (when the render has one)
    route = _one(docs, "HTTPRoute")
    refs = [b for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
    assert refs and all(b["name"] == POOL for b in refs)
    gateways = _of(docs, "Gateway")
    parents = {p["name"] for p in route["spec"]["parentRefs"]}
    assert parents == {"inference-gateway"}
    if gateways:
        assert {g["metadata"]["name"] for g in gateways} == parents


GATEWAY_CLASSES = {"overlays/envoy-gateway": "envoy-ai-gateway", "overlays/istio": "istio",
                   "overlays/kgateway": "agentgateway"}


@pytest.mark.parametrize("overlay,cls", sorted(GATEWAY_CLASSES.items()))
def test_gateway_overlays(rendered, overlay, cls):
    docs = _docs(rendered, overlay)
    gw = _one(docs, "Gateway", "inference-gateway")
    assert gw["spec"]["gatewayClassName"] == cls
    assert [(l["protocol"], l["port"]) for l in gw["spec"]["listeners"]] == [("HTTP", 80)]
    if overlay == "overlays/istio":
        dr = _one(docs, "DestinationRule")
        assert dr["spec"]["host"] == EPP, "TLS origination towards the EPP Service"
        assert dr["spec"]["trafficPolicy"]["tls"] == {"mode": "SIMPLE", "insecureSkipVerify": True}
    else:
        assert not _of(docs, "DestinationRule")
    if overlay == "overlays/envoy-gateway":
        gc = _one(_docs(rendered, "overlays/envoy-gateway/gatewayclass"), "GatewayClass", cls)
        assert gc["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"
    assert not _of(docs, "GatewayClass"), "GatewayClasses are cluster-wide; applied on their own"


def test_ha_overlay(rendered):
    docs = _docs(rendered, "overlays/ha")
    dep = _epp_deployment(docs)
    assert 2 <= dep["spec"]["replicas"] <= 3
    assert "--ha-enable-leader-election" in _container(dep, "epp")["args"]
    aff = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert aff["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["labelSelector"][
        "matchLabels"] == dep["spec"]["selector"]["matchLabels"]


# ---- model servers -----------------------------------------------------------------------------------

MODEL_SERVERS = {"model-servers/vllm-aggregated": ("vllm", False), "model-servers/vllm-pd": ("vllm", True),
                 "model-servers/vllm-pd-aws-efa": ("vllm", True), "model-servers/sim-aggregated": ("sim", False),
                 "model-servers/sim-pd": ("sim", True)}


def _server_container(dep) -> dict:
    return _container(dep, "vllm")


def _sim_parser():
    from vllm_sim.cli import build_parser as sim_parser
    return sim_parser()


def _check_server_args(c, engine: str) -> dict:
    """Returns the parsed flags the checks below need, from a vLLM or vllm-sim command line."""
    args = c["args"]
    if engine == "sim":
        assert c["command"] == ["vllm-sim"] and _image_name(c["image"]) == EPP_IMAGE
        try:
            ns = _sim_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"vllm-sim rejects {args}")
        return {"model": ns.model, "port": ns.port, "kv_events": ns.kv_events_config,
                "kv_transfer": ns.kv_transfer_config, "host": ns.host}
    assert c["command"][:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--enable-prefix-caching" in args
    return {"model": _flag_value(args, "--model"), "port": int(_flag_value(args, "--port")),
            "kv_events": _flag_value(args, "--kv-events-config"),
            "kv_transfer": _flag_value(args, "--kv-transfer-config"), "host": "0.0.0.0"}


def _expand(value: str, env: dict[str, dict]) -> str:
    """Kubernetes' $(VAR) expansion in args, for env given by value; downward-API ones become markers."""
    def sub(m):
        e = env.get(m.group(1))
        assert e is not None, f"$({m.group(1)}) is not defined in the container's env"
        return e["value"] if "value" in e else f"<{e['valueFrom']['fieldRef']['fieldPath']}>"
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


@pytest.mark.parametrize("name", sorted(MODEL_SERVERS))
def test_model_servers(rendered, name):
    engine, pd = MODEL_SERVERS[name]
    docs = _docs(rendered, name)
    base = _docs(rendered, "base")
    selector = _one(base, "InferencePool", POOL)["spec"]["selector"]["matchLabels"]
    target = _one(base, "InferencePool", POOL)["spec"]["targetPorts"][0]["number"]
    deps = _of(docs, "Deployment")
    assert deps and all(_labels_match(selector, d["spec"]["template"]["metadata"]["labels"]) for d in deps)
    roles = {d["spec"]["template"]["metadata"]["labels"].get("llm-d.ai/role") for d in deps}
    assert roles == ({"prefill", "decode"} if pd else {None})
    for dep in deps:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        # a Deployment's selector picks only its own pods (prefill and decode share the pool label)
        assert _labels_match(dep["spec"]["selector"]["matchLabels"], labels)
        if pd:
            assert dep["spec"]["selector"]["matchLabels"]["llm-d.ai/role"] == labels["llm-d.ai/role"]
        c = _server_container(dep)
        env = _env(c)
        flags = _check_server_args(c, engine)
        assert flags["model"] == MODEL
        if engine == "vllm":
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert _env(c)["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
        else:
            assert not any("nvidia.com/gpu" in c["resources"].get(k, {}) for k in ("requests", "limits"))
            assert flags["host"] == "0.0.0.0"
        server_ports = {p["containerPort"] for p in c["ports"]}
        assert flags["port"] in server_ports
        for probe in ("readinessProbe", "livenessProbe"):
            port = c[probe]["httpGet"]["port"]
            port = next(p["containerPort"] for p in c["ports"] if p.get("name") == port) if isinstance(port, str) else port
            assert port == flags["port"] and c[probe]["httpGet"]["path"] == "/health"

        role = labels.get("llm-d.ai/role")
        if role == "decode":
            # the pool's port is the native sidecar's; vLLM sits behind it on --vllm-port
            sc = _container(dep, "routing-sidecar", init=True)
            assert sc["restartPolicy"] == "Always" and sc["command"] == ["epp-sidecar"]
            assert _image_name(sc["image"]) == EPP_IMAGE
            assert int(_flag_value(sc["args"], "--port")) == target
            assert int(_flag_value(sc["args"], "--vllm-port")) == flags["port"] != target
            assert _flag_value(sc["args"], "--kv-connector") == "nixlv2"
            assert "--enable-ssrf-protection" in sc["args"]
            assert _env(sc)["INFERENCE_POOL"]["value"] == f"$(POOL_NAMESPACE)/{POOL}"
            assert _env(sc)["POOL_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
            assert "--secure-proxy=false" in sc["args"]     # the readiness probe and the gateway speak HTTP
            assert any(p["containerPort"] == target for p in sc["ports"])
            sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
            rb = next(rb for rb in _of(docs, "RoleBinding") if any(s["name"] == sa for s in rb["subjects"]))
            role_obj = _one(docs, "Role", rb["roleRef"]["name"])
            assert all(set(r["verbs"]) <= {"list", "watch"} for r in role_obj["rules"]), "read-only"
        else:
            assert flags["port"] == target
            assert not dep["spec"]["template"]["spec"].get("initContainers")

        if pd:
            kvt = json.loads(_expand(flags["kv_transfer"], env))
            assert kvt["kv_connector"] == "NixlConnector" and kvt["kv_role"] == "kv_both"
            assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            if engine == "sim":
                from vllm_sim.pd import parse_kv_transfer_config
                assert parse_kv_transfer_config(json.dumps(kvt)) is not None
            else:
                assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"]["value"] == "5600"
                assert any(p["containerPort"] == 5600 for p in c["ports"])
            if name.endswith("aws-efa"):
                assert kvt["kv_connector_extra_config"]["backends"] == ["LIBFABRIC"]
                assert env["FI_PROVIDER"]["value"] == "efa"
                for k in ("requests", "limits"):
                    assert int(c["resources"][k]["vpc.amazonaws.com/efa"]) >= 1
                assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
                assert not c["image"].startswith("vllm/vllm-openai"), "EFA needs a libfabric-enabled vLLM image"
        else:
            # KV events for precise routing: to the EPP Service's KV-event port, topic naming pod:port@model
            precise = _docs(rendered, "overlays/precise-prefix")
            svc = _one(precise, "Service", EPP)
            kv_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "tcp-kv-events")
            ev = json.loads(flags["kv_events"])
            assert ev["enable_kv_cache_events"] is True and ev["publisher"] == "zmq"
            assert ev["endpoint"] == f"tcp://{EPP}:{kv_port}", "connects (central mode): the EPP binds"
            assert _expand(ev["topic"], env) == f"kv@<status.podIP>:{target}@{MODEL}"
            if engine == "sim":
                from vllm_sim.kv_events import parse_kv_events_config
                assert parse_kv_events_config(flags["kv_events"]) is not None
            else:
                assert "--block-size=16" in c["args"]


def test_epp_sidecar_flags(rendered):
    """The decode pods' routing-sidecar flags parse with epp-sidecar's own parser (its console script's module)."""
    import importlib
    from importlib.metadata import entry_points
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "epp-sidecar"]
    build = importlib.import_module(ep.value.split(":")[0]).build_parser
    for name in ("model-servers/vllm-pd", "model-servers/sim-pd"):
        dep = _one(_docs(rendered, name), "Deployment", f"{POOL}-decode")
        args = _container(dep, "routing-sidecar", init=True)["args"]
        try:
            build().parse_args(args)
        except SystemExit:
            pytest.fail(f"epp-sidecar rejects {args}")
