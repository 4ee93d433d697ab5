#!/usr/bin/env python3
"""Start a compose project with podman-compose the way `docker compose up -d --wait` would, on a
machine without systemd and with a podman older than 4.6.

Why: podman runs a container's healthcheck only from a systemd timer, so with no systemd a
container never becomes healthy by itself; and podman-compose (1.6) ignores `condition:
service_healthy` on podman < 4.6 and takes `service_completed_successfully` as "stopped", whatever
the exit code. Both would start the memory roles before Postgres and NATS are up and after a failed
migration. This script reads the same compose file (through `podman-compose config`, so variables
are resolved as podman-compose resolves them), starts the services in dependency order with
`podman-compose up -d --no-deps`, runs healthchecks itself (`podman healthcheck run`), and enforces
every `depends_on` condition:
  service_started                 every container of the dependency has started
  service_healthy                 every container of it passes its healthcheck
  service_completed_successfully  every container of it exited with code 0 (another code: failure)
Then it waits until every long-running container is healthy (or running, without a healthcheck)
and every one-shot has exited 0, and exits 0; on a failure or at the deadline it exits 1 and says
which services are not ready.

Usage: podman-up.py [--timeout SECS] [--podman-compose CMD] -- [podman-compose global options] \
         [-- SERVICE ...]
  e.g. podman-up.py --timeout 600 -- -f docker-compose.yml -- nats postgres redis
Without services: every service in the file (their dependencies are always included).
"""

import argparse
import json
import shlex
import subprocess
import sys
import time

import yaml


def log(msg):
    print(f"podman-up: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, capture=True):
    return subprocess.run(cmd, check=check, text=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)


def depends(svc_desc):
    """depends_on as {service: condition}; the short (list) form means service_started."""
    deps = svc_desc.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {d: (v or {}).get("condition", "service_started") for d, v in deps.items()}


def closure(services, wanted):
    todo, seen = list(wanted), set()
    while todo:
        s = todo.pop()
        if s in seen:
            continue
        if s not in services:
            raise SystemExit(f"podman-up: no service {s!r} in the compose file")
        seen.add(s)
        todo.extend(depends(services[s]))
    return seen


class Project:
    def __init__(self, name, services):
        self.name = name
        self.services = services
        self.healthy = {}  # container name -> last healthcheck passed

    def containers(self):
        """{service: [container dict]} from podman, for this project."""
        out = run(["podman", "ps", "-a", "--format", "json",
                   "--filter", f"label=io.podman.compose.project={self.name}"]).stdout
        by_service = {}
        for c in json.loads(out or "[]"):
            svc = (c.get("Labels") or {}).get("com.docker.compose.service")
            if svc:
                by_service.setdefault(svc, []).append(c)
        return by_service

    def has_healthcheck(self, svc):
        hc = self.services[svc].get("healthcheck") or {}
        if hc.get("disable"):
            return False
        test = hc.get("test")
        if test is None:
            # The image's own HEALTHCHECK, if any.
            return bool(self.image_healthcheck(self.services[svc].get("image", "")))
        return test not in (["NONE"], "NONE")

    def image_healthcheck(self, image):
        r = run(["podman", "image", "inspect", "--format", "{{json .HealthCheck}}", image], check=False)
        return r.returncode == 0 and r.stdout.strip() not in ("", "null", "<nil>")

    def expected(self, svc):
        d = self.services[svc].get("deploy") or {}
        return int(d.get("replicas", 1)) if d.get("mode", "replicated") == "replicated" else 1

    def check_health(self, containers):
        for svc, cs in containers.items():
            if svc not in self.services or not self.has_healthcheck(svc):
                continue
            for c in cs:
                name = c["Names"][0]
                if c["State"] == "running":
                    r = run(["podman", "healthcheck", "run", name], check=False)
                    self.healthy[name] = r.returncode == 0
                else:
                    self.healthy[name] = False

    def state(self, svc, containers):
        """waiting | started (not yet healthy) | healthy | running (no healthcheck) | completed |
        failed, for one service."""
        cs = containers.get(svc, [])
        if len(cs) < self.expected(svc):
            return "waiting"
        if all(c["State"] == "exited" for c in cs):
            return "completed" if all(c.get("ExitCode", 1) == 0 for c in cs) else "failed"
        if any(c["State"] not in ("running", "exited") for c in cs):
            return "waiting"
        if self.has_healthcheck(svc):
            running = [c for c in cs if c["State"] == "running"]
            if running and all(self.healthy.get(c["Names"][0]) for c in running):
                return "healthy"
            return "started"
        return "running"

    def satisfied(self, dep, condition, containers):
        st = self.state(dep, containers)
        if condition == "service_completed_successfully":
            if st == "failed":
                raise Failure(f"{dep} did not complete successfully")
            return st == "completed"
        if condition == "service_healthy":
            if st in ("failed", "completed") and not self.restarts(dep):
                raise Failure(f"{dep} exited before becoming healthy")
            # (docker compose refuses a dependency without a healthcheck; running is taken here)
            return st in ("healthy", "running")
        return st in ("started", "healthy", "running", "completed", "failed")

    def restarts(self, svc):
        return str(self.services[svc].get("restart", "no")) in ("always", "unless-stopped")

    def ready(self, svc, containers):
        """What `docker compose up --wait` waits for: one-shots done, the rest healthy/running."""
        st = self.state(svc, containers)
        if st == "completed" and not self.restarts(svc):
            return True
        if st == "failed" and not self.restarts(svc):
            raise Failure(f"{svc} exited with an error")
        return st in ("healthy", "running")


class Failure(Exception):
    pass


def main():
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit(__doc__)
    i = argv.index("--")
    ours, rest = argv[:i], argv[i + 1:]
    if "--" in rest:
        j = rest.index("--")
        global_opts, wanted = rest[:j], rest[j + 1:]
    else:
        global_opts, wanted = rest, []
    p = argparse.ArgumentParser()
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--podman-compose", default="podman-compose")
    args = p.parse_args(ours)

    compose = shlex.split(args.podman_compose) + global_opts
    config = yaml.safe_load(run(compose + ["config"]).stdout)
    services = config["services"]
    name = config.get("name")
    for k, opt in enumerate(global_opts):
        if opt in ("-p", "--project-name") and k + 1 < len(global_opts):
            name = global_opts[k + 1]
        elif opt.startswith("--project-name="):
            name = opt.split("=", 1)[1]
    if not name:
        raise SystemExit("podman-up: name the project (top-level `name:` or -p)")
    project = Project(name, services)
    todo = closure(services, wanted or list(services))
    started, reported = set(), {}
    deadline = time.monotonic() + args.timeout
    t0 = time.monotonic()

    try:
        while True:
            containers = project.containers()
            project.check_health({s: cs for s, cs in containers.items() if s in started})
            for svc in sorted(started):
                st = project.state(svc, containers)
                if reported.get(svc) != st and st in ("healthy", "completed", "failed"):
                    log(f"{svc}: {st} after {time.monotonic() - t0:.0f} s")
                    reported[svc] = st
            startable = [s for s in sorted(todo - started)
                         if all(project.satisfied(d, c, containers) for d, c in depends(services[s]).items())]
            if startable:
                log(f"starting {' '.join(startable)}")
                r = run(compose + ["up", "-d", "--no-deps", "--no-build", *startable], check=False)
                if r.returncode != 0:
                    sys.stderr.write(r.stdout + r.stderr)
                    raise Failure(f"podman-compose up {' '.join(startable)} failed")
                started.update(startable)
                continue
            if started == todo and all(project.ready(s, containers) for s in todo):
                log(f"all {len(todo)} services ready after {time.monotonic() - t0:.0f} s")
                return 0
            if time.monotonic() > deadline:
                raise Failure("deadline passed")
            time.sleep(2)
    except Failure as e:
        containers = project.containers()
        log(f"FAILED: {e}")
        for svc in sorted(todo):
            st = project.state(svc, containers) if svc in started else "not started"
            log(f"  {svc}: {st}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
