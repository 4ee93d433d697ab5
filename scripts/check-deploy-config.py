#!/usr/bin/env python3
"""Checks that the deployments configure the service with variables it reads.

- Every MEMORY_* variable set in docker-compose.yml, the Dockerfile and the rendered Kubernetes
  overlays (env, envFrom ConfigMaps and Secrets) is one that common/src/config/ reads.
- Every container running a role has what that role requires: MEMORY_DATABASE_URL and
  MEMORY_NATS_URL for all, MEMORY_ADMIN_API_KEY for the gateway, MEMORY_MODEL_DIR (provider local,
  the default) or MEMORY_GEMINI_API_KEY (provider gemini) for the embedder.
- Every variable common/src/config/ reads is documented in the README.

Usage: check-deploy-config.py RENDERED.yaml...   (kubectl kustomize output of each overlay)
Needs PyYAML. Exits 1 with one line per problem.
"""

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = {"gateway", "embedder", "searcher", "retention", "all", "migrate"}
REQUIRED = {
    "gateway": {"MEMORY_DATABASE_URL", "MEMORY_NATS_URL", "MEMORY_ADMIN_API_KEY"},
    "embedder": {"MEMORY_DATABASE_URL", "MEMORY_NATS_URL"},
    "searcher": {"MEMORY_DATABASE_URL", "MEMORY_NATS_URL"},
    "retention": {"MEMORY_DATABASE_URL", "MEMORY_NATS_URL"},
    "migrate": {"MEMORY_DATABASE_URL"},
}
REQUIRED["all"] = set().union(*(REQUIRED[r] for r in ("gateway", "embedder", "searcher", "retention")))

problems = []


def known_variables():
    text = "".join(f.read_text() for f in sorted((ROOT / "common/src/config").glob("*.rs")))
    return set(re.findall(r'"(MEMORY_[A-Z0-9_]+)"', text))


def image_env():
    """The ENV the Dockerfile's final stage sets: every container of the image has it."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    names = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for name, value in re.findall(r"(MEMORY_[A-Z0-9_]+)=(\S+)", line):
                names[name] = value
    return names


def check_role(where, role, env, known):
    """`env` holds the container's MEMORY_* variables (with "?" for values kept in a Secret)."""
    for name in env:
        if name.startswith("MEMORY_") and name not in known:
            problems.append(f"{where}: {name} is not a variable the service reads")
    if role not in REQUIRED:
        return
    needed = set(REQUIRED[role])
    if role in ("embedder", "all"):
        provider = env.get("MEMORY_EMBEDDING_PROVIDER", "local")
        if provider == "local":
            needed.add("MEMORY_MODEL_DIR")
        elif provider == "gemini":
            needed.add("MEMORY_GEMINI_API_KEY")
    for name in sorted(needed - set(env)):
        problems.append(f"{where} ({role}): required {name} is not set")
    ROLE_ENVS.setdefault(where.split(" ")[0], []).append((where, role, env))


# Per deployment file: every role container's variables, for the checks across roles.
ROLE_ENVS = {}


def check_across_roles():
    """The embedders cache query vectors in Redis: retention (which erases tenants) must reach the
    same Redis, or an erased tenant's cached queries outlive it."""
    for source, containers in ROLE_ENVS.items():
        cached = any(role in ("embedder", "all") and "MEMORY_REDIS_URL" in env for _, role, env in containers)
        for where, role, env in containers:
            if cached and role == "retention" and "MEMORY_REDIS_URL" not in env:
                problems.append(f"{where} (retention): the embedders cache in Redis but MEMORY_REDIS_URL is not set")


def role_of(args):
    args = [a for a in (args or []) if isinstance(a, str)]
    return next((a for a in args if a in ROLES), None)


def compose(known, base_env):
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = 0
    for name, service in spec["services"].items():
        image = str(service.get("image", ""))
        if "memory-layer" not in image:
            continue
        command = service.get("command") or ["all"]
        if isinstance(command, str):
            command = command.split()
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        env = {**base_env, **{k: str(v) for k, v in env.items()}}
        role = role_of(command)
        if role is None and command[0] not in ("fetch-model", "probe"):
            problems.append(f"docker-compose.yml {name}: runs {command}, not a role")
        check_role(f"docker-compose.yml {name}", role, env, known)
        services += 1
    return services


def kubernetes(path, known, base_env):
    objects = [o for o in yaml.safe_load_all(Path(path).read_text()) if o]
    config_maps = {o["metadata"]["name"]: o.get("data") or {} for o in objects if o["kind"] == "ConfigMap"}
    secrets = {
        o["metadata"]["name"]: {**(o.get("data") or {}), **(o.get("stringData") or {})}
        for o in objects
        if o["kind"] == "Secret"
    }
    containers = 0
    for o in objects:
        if o["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = o["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            if "memory-layer" not in c.get("image", ""):
                continue
            env = dict(base_env)
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    env.update({k: str(v) for k, v in config_maps.get(source["configMapRef"]["name"], {}).items()})
                if "secretRef" in source:
                    ref = source["secretRef"]["name"]
                    # A Secret the operator creates (production) is not in the render: its keys are unknown.
                    env.update({k: "?" for k in secrets.get(ref, {})})
            for e in c.get("env", []):
                env[e["name"]] = str(e.get("value", "?"))
            where = f"{path} {o['kind']}/{o['metadata']['name']}/{c['name']}"
            check_role(where, role_of(c.get("args")) or role_of(c.get("command")), env, known)
            containers += 1
    return containers


def main():
    known = known_variables()
    base_env = image_env()
    for name in base_env:
        if name not in known:
            problems.append(f"Dockerfile: ENV {name} is not a variable the service reads")
    readme = (ROOT / "README.md").read_text()
    for name in sorted(known):
        if name not in readme:
            problems.append(f"README.md: {name} is read by the service but not documented")
    counts = [f"compose: {compose(known, base_env)} services"]
    for path in sys.argv[1:]:
        counts.append(f"{Path(path).name}: {kubernetes(path, known, base_env)} containers")
    check_across_roles()
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"deploy config: {len(known)} variables known; " + ", ".join(counts) + "; all set and required ones present")


main()
