#!/usr/bin/env python3
"""Check deploy/: the Kubernetes manifests against the Kubernetes schema, and the
manifests, the compose file and the gateway configs they carry against each other.

    python3 deploy/check.py --switchyard target/debug/switchyard

Run by tests/tests/e2e/deploy.rs. Needs `kubernetes-validate` (PyPI; it ships the schemas,
so no cluster and no network) and PyYAML (its dependency). Every problem found is printed,
each naming the file and the object; the exit status is 1 when there is any.

What is checked:
- every manifest validates (`--strict`: unknown fields are errors) against Kubernetes 1.37;
  kinds without a schema there (ServiceMonitor, a CRD) are checked field by field below;
- the gateway config embedded in the ConfigMap, and deploy/compose/switchyard.toml, pass
  `switchyard check` (the gateway's own validator);
- probes, ports and names agree with that config: readiness on /readyz and liveness on
  /healthz at the port `[server] listen` names, the admin port, termination grace longer than
  the preStop pause plus `shutdown_grace_secs`, the ConfigMap mounted as a folder (so the
  kubelet updates it and the gateway reloads it), every environment variable the config
  names set from a Secret key that exists, every backend URL naming a pod of a worker pool
  (all of its replicas, at the port its Service and container use), Redis and PostgreSQL
  at their Services, the PodDisruptionBudget, HorizontalPodAutoscaler and ServiceMonitors
  selecting what they should;
- in compose.yaml: the gateway's config names services that exist, at their ports; and
  `docker-compose config` accepts the file (where docker-compose is installed).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import yaml

DEPLOY = Path(__file__).resolve().parent
K8S = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.37.0"

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def load_manifests():
    """Every object in deploy/kubernetes/*.yaml, as (file name, object)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def validate_schemas(objects):
    import kubernetes_validate

    for name, obj in objects:
        what = f"{name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if obj.get("apiVersion") != "monitoring.coreos.com/v1":
                problem(what, f"no Kubernetes {KUBERNETES_VERSION} schema for this kind")
        except kubernetes_validate.ValidationError as e:
            problem(what, f"does not validate: {e.message} (at {'.'.join(map(str, e.path))})")


def switchyard_check(binary, text, where):
    """`switchyard check` on config text; the parsed TOML when it passes."""
    config = tomllib.loads(text)
    env = dict(os.environ)
    for name in env_names(config):
        env[name] = "check-only-" + "x" * 24
    env.pop("SWITCHYARD_CONFIG", None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "switchyard.toml"
        path.write_text(text)
        run = subprocess.run(
            [binary, "check", "--config", str(path)],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=120,
        )
    if run.returncode != 0 and "unknown field `postgres`" in run.stderr and not ci():
        # A gateway built before the PostgreSQL store (issue 39): check the rest of the
        # config without those two keys, and say so.
        print(f"SKIPPED: {where}: this switchyard has no [state] postgres; checked without it")
        stripped = re.sub(r"(?m)^\s*postgres(_password_env)?\s*=.*$", "", text)
        return switchyard_check(binary, stripped, where) and config
    if run.returncode != 0:
        problem(where, "switchyard check refuses its config:\n" + run.stderr.strip())
    return config


def ci():
    return os.environ.get("SWITCHYARD_CI") == "1"


def env_names(config):
    names = [b["api_key_env"] for b in config.get("backends", []) if "api_key_env" in b]
    if "token_env" in config.get("admin", {}):
        names.append(config["admin"]["token_env"])
    if "postgres_password_env" in config.get("state", {}):
        names.append(config["state"]["postgres_password_env"])
    return names


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def find(objects, kind, name):
    for _, obj in objects:
        if obj.get("kind") == kind and obj["metadata"]["name"] == name:
            return obj
    return None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_port(container, name_or_number):
    if isinstance(name_or_number, int):
        return name_or_number
    for p in container.get("ports", []):
        if p.get("name") == name_or_number:
            return p["containerPort"]
    return None


def service_target(service, pod_containers, port):
    """The container port a Service's `port` lands on."""
    for p in service["spec"]["ports"]:
        if p["port"] == port:
            target = p.get("targetPort", p["port"])
            for c in pod_containers:
                found = container_port(c, target)
                if found is not None:
                    return found
    return None


def check_gateway(objects, binary):
    where = "gateway.yaml"
    cm = find(objects, "ConfigMap", "switchyard-config")
    dep = find(objects, "Deployment", "switchyard-gateway")
    if cm is None or dep is None:
        problem(where, "needs ConfigMap switchyard-config and Deployment switchyard-gateway")
        return
    key = "switchyard.toml"
    text = cm.get("data", {}).get(key)
    if text is None:
        problem(where, f"ConfigMap switchyard-config has no key {key}")
        return
    config = switchyard_check(binary, text, f"{where}: ConfigMap switchyard-config")
    server = config.get("server", {})
    listen = port_of(server.get("listen", "127.0.0.1:8080"))
    grace = float(server.get("shutdown_grace_secs", 30))
    admin_listen = config.get("admin", {}).get("listen")

    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    if spec.get("replicas", 1) < 2:
        problem(where, "the gateway Deployment needs at least 2 replicas")
    if not selects(spec["selector"]["matchLabels"], labels):
        problem(where, "the Deployment's selector does not match its pods")
    (c,) = [c for c in pod["containers"] if c["name"] == "gateway"]

    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet")
        if not get:
            problem(where, f"the gateway container needs an httpGet {probe} on {path}")
            continue
        if get.get("path") != path:
            problem(where, f"{probe} asks {get.get('path')}, not {path}")
        if container_port(c, get.get("port")) != listen:
            problem(where, f"{probe} port {get.get('port')} is not [server] listen's {listen}")
    if container_port(c, "http") != listen:
        problem(where, f"container port `http` is not [server] listen's port {listen}")
    if admin_listen and container_port(c, "admin") != port_of(admin_listen):
        problem(where, f"container port `admin` is not [admin] listen's port {port_of(admin_listen)}")

    pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    tgp = pod.get("terminationGracePeriodSeconds", 30)
    if not tgp > grace + pause:
        problem(
            where,
            f"terminationGracePeriodSeconds {tgp} must exceed the preStop pause ({pause}) "
            f"plus [server] shutdown_grace_secs ({grace:g})",
        )

    # The config: the ConfigMap as a folder (subPath mounts are never updated).
    args = c.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    if config_path is None:
        problem(where, "the gateway is not given --config")
    else:
        mounts = {
            m["name"]: m for m in c.get("volumeMounts", []) if config_path.startswith(m["mountPath"] + "/")
        }
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        hit = [
            (m, volumes.get(n))
            for n, m in mounts.items()
            if volumes.get(n, {}).get("configMap", {}).get("name") == "switchyard-config"
        ]
        if not hit:
            problem(where, f"--config {config_path} is not inside a mount of ConfigMap switchyard-config")
        else:
            m, _ = hit[0]
            if "subPath" in m:
                problem(where, "ConfigMap mounted with subPath: the kubelet never updates it, so no live reload")
            if config_path[len(m["mountPath"]) + 1 :] != key:
                problem(where, f"--config {config_path} names no key of the ConfigMap")

    # Every variable the config names comes from a Secret key that exists.
    env = {e["name"]: e for e in c.get("env", [])}
    for name in env_names(config):
        ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef")
        if not ref:
            problem(where, f"{name} (named by the config) is not set from a Secret")
            continue
        secret = find(objects, "Secret", ref["name"])
        if secret is None:
            problem(where, f"{name}: no Secret {ref['name']} among the manifests")
        elif ref["key"] not in {**secret.get("data", {}), **secret.get("stringData", {})}:
            problem(where, f"{name}: Secret {ref['name']} has no key {ref['key']}")

    # Services in front of it.
    svc = find(objects, "Service", "switchyard-gateway")
    if svc is None or not selects(svc["spec"].get("selector"), labels):
        problem(where, "Service switchyard-gateway must select the gateway pods")
    elif service_target(svc, [c], listen) is None and all(
        container_port(c, p.get("targetPort", p["port"])) != listen for p in svc["spec"]["ports"]
    ):
        problem(where, "Service switchyard-gateway does not reach [server] listen's port")

    pdb = find(objects, "PodDisruptionBudget", "switchyard-gateway")
    if pdb is None or not selects(pdb["spec"]["selector"]["matchLabels"], labels):
        problem(where, "PodDisruptionBudget switchyard-gateway must select the gateway pods")
    elif pdb["spec"].get("minAvailable", 0) >= spec.get("replicas", 1):
        problem(where, "the PodDisruptionBudget's minAvailable leaves no pod to disrupt")

    hpa = find(objects, "HorizontalPodAutoscaler", "switchyard-gateway")
    if hpa is None:
        problem(where, "HorizontalPodAutoscaler switchyard-gateway is missing")
    else:
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", "switchyard-gateway"):
            problem(where, "the HorizontalPodAutoscaler scales something else")
        if hpa["spec"].get("minReplicas", 1) < 2:
            problem(where, "the HorizontalPodAutoscaler may scale below 2 replicas")
        if not c.get("resources", {}).get("requests", {}).get("cpu"):
            problem(where, "a CPU target needs the container's CPU request")

    check_backends(objects, config, where)
    check_state(objects, config, c, where)
    check_monitors(objects, svc, where)


CLUSTER_HOST = re.compile(r"^(?:(?P<pod>[a-z0-9-]+)\.)?(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+)\.svc\.cluster\.local$")


def check_backends(objects, config, where):
    for b in config.get("backends", []):
        urls = b.get("urls") or [b.get("url")]
        pools = {}
        for url in urls:
            u = urlparse(url)
            m = CLUSTER_HOST.match(u.hostname or "")
            if not m:
                continue  # outside the cluster (a provider)
            svc = find(objects, "Service", m["svc"])
            what = f"{where}: backend {b['name']} URL {url}"
            if svc is None or svc["metadata"].get("namespace") != m["ns"]:
                problem(what, f"no Service {m['svc']} in namespace {m['ns']}")
                continue
            workloads = [
                obj
                for _, obj in objects
                if obj.get("kind") in ("StatefulSet", "Deployment", "DaemonSet")
                and selects(svc["spec"].get("selector"), obj["spec"]["template"]["metadata"]["labels"])
            ]
            if not workloads:
                problem(what, f"Service {m['svc']} selects no workload")
                continue
            w = workloads[0]
            containers = w["spec"]["template"]["spec"]["containers"]
            if service_target(svc, containers, u.port) is None:
                problem(what, f"port {u.port} is not a port of Service {m['svc']} reaching a container port")
            if m["pod"]:
                if w["kind"] != "StatefulSet" or w["spec"].get("serviceName") != m["svc"]:
                    problem(what, f"{m['pod']} is not a pod name: no StatefulSet governed by Service {m['svc']}")
                    continue
                if svc["spec"].get("clusterIP") != "None":
                    problem(what, f"Service {m['svc']} must be headless for per-pod names")
                pools.setdefault(w["metadata"]["name"], (w, set()))[1].add(m["pod"])
            health = b.get("pool", {}).get("health_path")
            ready = containers[0].get("readinessProbe", {}).get("httpGet", {}).get("path")
            if health and ready and health != ready:
                problem(what, f"pool.health_path {health} differs from the workers' readiness path {ready}")
        for name, (w, pods) in pools.items():
            want = {f"{name}-{i}" for i in range(w["spec"].get("replicas", 1))}
            if pods != want:
                problem(
                    f"{where}: backend {b['name']}",
                    f"urls name pods {sorted(pods)} but StatefulSet {name} runs {sorted(want)}: "
                    "scale both together",
                )
            check_worker(w)


def check_worker(w):
    where = f"StatefulSet {w['metadata']['name']}"
    pod = w["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    if str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")) != "1":
        problem(where, "each worker pod must request exactly one GPU (limits nvidia.com/gpu: 1)")
    args = c.get("command", []) + c.get("args", [])
    flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    if flags.get("device") != "cuda:0":
        problem(where, "the worker must run on --device=cuda:0 (its one GPU)")
    if "port" in flags and int(flags["port"]) != container_port(c, "http"):
        problem(where, f"--port {flags['port']} is not container port `http`")
    model = flags.get("model", "")
    if not any(model.startswith(m["mountPath"] + "/") for m in c.get("volumeMounts", [])):
        problem(where, f"--model {model} is not on a mounted volume")


def check_state(objects, config, gateway, where):
    state = config.get("state", {})
    for key, service_port in (("redis", 6379), ("postgres", 5432)):
        if key not in state:
            problem(where, f"[state] {key} is not set: replicas would not share it")
            continue
        u = urlparse(state[key])
        m = CLUSTER_HOST.match(u.hostname or "")
        svc = find(objects, "Service", m["svc"]) if m else None
        if svc is None:
            problem(where, f"[state] {key} names no Service of the manifests: {state[key]}")
            continue
        if u.port not in [p["port"] for p in svc["spec"]["ports"]]:
            problem(where, f"[state] {key} port {u.port} is not a port of Service {m['svc']}")
    pg = find(objects, "StatefulSet", "postgres")
    if pg and "postgres" in state:
        u = urlparse(state["postgres"])
        (c,) = pg["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in c.get("env", [])}
        if env.get("POSTGRES_USER", {}).get("value") != u.username:
            problem(where, f"[state] postgres user {u.username} is not the database's POSTGRES_USER")
        if env.get("POSTGRES_DB", {}).get("value") != u.path.lstrip("/"):
            problem(where, f"[state] postgres database {u.path} is not the database's POSTGRES_DB")
        name = state.get("postgres_password_env")
        ours = {e["name"]: e for e in gateway.get("env", [])}.get(name, {}).get("valueFrom")
        if ours != env.get("POSTGRES_PASSWORD", {}).get("valueFrom"):
            problem(where, f"{name} and the database's POSTGRES_PASSWORD come from different Secret keys")


def check_monitors(objects, gateway_service, where):
    monitors = [obj for _, obj in objects if obj.get("kind") == "ServiceMonitor"]
    services = [obj for _, obj in objects if obj.get("kind") == "Service"]
    if not any(gateway_service and selects(m["spec"]["selector"]["matchLabels"], gateway_service["metadata"]["labels"]) for m in monitors):
        problem(where, "no ServiceMonitor selects Service switchyard-gateway")
    for m in monitors:
        what = f"monitoring.yaml: ServiceMonitor {m['metadata']['name']}"
        chosen = [s for s in services if selects(m["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        if not chosen:
            problem(what, "selects no Service")
        for e in m["spec"]["endpoints"]:
            if e.get("path", "/metrics") != "/metrics":
                problem(what, f"scrapes {e['path']}, not /metrics")
            for s in chosen:
                if e.get("port") not in [p.get("name") for p in s["spec"]["ports"]]:
                    problem(what, f"port {e.get('port')} is not a named port of Service {s['metadata']['name']}")


def check_compose(binary):
    where = "compose.yaml"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    gw = services["gateway"]
    mounts = [v.split(":") for v in gw.get("volumes", [])]
    config_src = [src for src, dst, *_ in mounts if dst == "/etc/switchyard/switchyard.toml"]
    if not config_src:
        problem(where, "the gateway's config is not mounted at /etc/switchyard/switchyard.toml")
        return
    path = (DEPLOY / config_src[0]).resolve()
    config = switchyard_check(binary, path.read_text(), f"{where}: {path.relative_to(DEPLOY)}")
    listen = port_of(config.get("server", {}).get("listen", "127.0.0.1:8080"))
    if not any(p.split(":")[-1].split("/")[0] == str(listen) for p in gw.get("ports", [])):
        problem(where, f"the gateway's published ports do not include [server] listen's {listen}")
    grace = float(config.get("server", {}).get("shutdown_grace_secs", 30))
    stop = gw.get("stop_grace_period", "10s")
    if not float(stop.rstrip("s")) > grace:
        problem(where, f"stop_grace_period {stop} must exceed shutdown_grace_secs {grace:g}")
    urls = [u for b in config.get("backends", []) for u in (b.get("urls") or [b.get("url")])]
    urls += [v for k, v in config.get("state", {}).items() if k in ("redis", "postgres")]
    urls += [config.get("telemetry", {}).get("otlp_endpoint", "")]
    for url in filter(None, urls):
        host = urlparse(url).hostname
        if "." not in host and host not in services:
            problem(where, f"{url}: no compose service {host}")
    env = gw.get("environment", {})
    for name in env_names(config):
        if name not in env:
            problem(where, f"{name} (named by the config) is not passed to the gateway")
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    if f"gateway:{listen}" not in targets:
        problem("compose/prometheus.yml", f"does not scrape gateway:{listen}")


def compose_config():
    """`docker-compose config` (the compose file's own schema), where it is installed."""
    import shutil

    tool = shutil.which("docker-compose")
    if tool is None:
        if ci():
            problem("compose.yaml", "docker-compose is not installed (apt install docker-compose)")
        else:
            print("SKIPPED: docker-compose config (docker-compose is not installed)")
        return
    env = dict(os.environ, SWITCHYARD_ADMIN_TOKEN="x" * 24, SWITCHYARD_POSTGRES_PASSWORD="x")
    run = subprocess.run(
        [tool, "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0:
        problem("compose.yaml", "docker-compose config refuses it:\n" + run.stderr.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--switchyard", required=True, help="the switchyard binary (for `check`)")
    args = ap.parse_args()
    objects = load_manifests()
    validate_schemas(objects)
    check_gateway(objects, args.switchyard)
    check_compose(args.switchyard)
    compose_config()
    for p in problems:
        print(p)
    kinds = sorted({f"{o['kind']}/{o['metadata']['name']}" for _, o in objects})
    print(f"deploy/check.py: {len(objects)} objects ({', '.join(kinds)}), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
