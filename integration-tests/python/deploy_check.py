"""Checks deploy/ against the binary it deploys: every magnetar command line in the compose
file, the Kubernetes manifests and the systemd units names a real subcommand and real flags,
every MAGNETAR_* variable is one the subcommand reads, every key of the example TOML files
is one of its settings; brokers have a health check, bookies a volume; the image runs as a
non-root user and ships a stripped binary. With a container engine, `docker compose config`
must accept the compose file too.

  deploy_check.py MAGNETAR_BIN DEPLOY_DIR
"""
import glob
import os
import re
import shutil
import subprocess
import sys

import yaml

BIN, DEPLOY = sys.argv[1], sys.argv[2]
helps = {}


def help_of(sub):
    if sub not in helps:
        out = subprocess.run([BIN, sub, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, "magnetar %s --help: %s" % (sub, out.stderr)
        helps[sub] = out.stdout
    return helps[sub]


def check_command(where, argv, env=()):
    if argv and argv[0].endswith("magnetar"):
        argv = argv[1:]
    assert argv, "%s: no magnetar subcommand" % where
    sub = argv[0]
    text = help_of(sub)
    for a in argv[1:]:
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            assert re.search(r"(^|\s)%s[\s,=]" % re.escape(flag), text, re.M), \
                "%s: magnetar %s has no flag %s" % (where, sub, flag)
    for name in env:
        if name.startswith("MAGNETAR_"):
            assert "env: %s=" % name in text, \
                "%s: magnetar %s reads no variable %s" % (where, sub, name)
    return sub


checked = 0
# compose
compose = yaml.safe_load(open(os.path.join(DEPLOY, "docker-compose.yml")))
roles = {}
for name, svc in compose["services"].items():
    if svc.get("image", "").startswith("magnetar"):
        sub = check_command("compose %s" % name, svc["command"], svc.get("environment", {}))
        roles[name] = sub
        checked += 1
        if sub in ("broker", "bookie"):
            assert "healthcheck" in svc, "compose %s: no healthcheck" % name
        if sub == "bookie":
            assert svc.get("volumes"), "compose %s: a bookie without a volume" % name
assert sorted(roles.values()).count("bookie") == 3, roles
assert sorted(roles.values()).count("broker") == 2, roles
assert "init-cluster" in roles.values(), roles

# kubernetes
kinds = []
for path in sorted(glob.glob(os.path.join(DEPLOY, "k8s", "*.yaml"))):
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        kinds.append(doc["kind"])
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec")
        if not pod:
            continue
        for c in pod["containers"]:
            if not c["image"].startswith("magnetar"):
                continue
            env = [e["name"] for e in c.get("env", [])]
            sub = check_command("%s %s" % (os.path.basename(path), c["name"]), c["args"], env)
            checked += 1
            if sub == "broker":
                assert doc["kind"] == "Deployment", "brokers keep no state: a Deployment"
                assert c["readinessProbe"]["httpGet"]["path"] == "/admin/v2/brokers/health"
            if sub == "bookie":
                assert doc["kind"] == "StatefulSet" and spec.get("volumeClaimTemplates"), \
                    "bookies need a StatefulSet with volumes"
for k in ("StatefulSet", "Deployment", "Service", "Job"):
    assert k in kinds, "k8s: no %s" % k

# systemd units and their example settings
for unit in sorted(glob.glob(os.path.join(DEPLOY, "systemd", "*.service"))):
    exec_start = [l.split("=", 1)[1] for l in open(unit) if l.startswith("ExecStart=")]
    assert exec_start, "%s: no ExecStart" % unit
    argv = exec_start[0].split()
    sub = check_command(os.path.basename(unit), argv)
    checked += 1
    toml_path = os.path.join(DEPLOY, "systemd", "%s.toml" % sub)
    keys = [l.split("=", 1)[0].strip() for l in open(toml_path)
            if "=" in l and not l.lstrip().startswith("#")]
    for k in keys:
        flag = "--" + k.replace("_", "-")
        assert re.search(r"(^|\s)%s[\s,=]" % re.escape(flag), help_of(sub), re.M), \
            "%s: %s is not a setting of magnetar %s" % (toml_path, k, sub)

# the image
docker = open(os.path.join(DEPLOY, "Dockerfile")).read()
assert re.search(r"^USER (?!root)\S+", docker, re.M), "the image must not run as root"
assert "strip" in docker, "ship a stripped binary"

engine = shutil.which("docker")
if engine and subprocess.run([engine, "info"], capture_output=True).returncode == 0:
    out = subprocess.run([engine, "compose", "-f", os.path.join(DEPLOY, "docker-compose.yml"),
                          "config", "-q"], capture_output=True, text=True)
    assert out.returncode == 0, "docker compose config: %s" % out.stderr
    print("docker compose config: ok")
else:
    print("no container engine here: compose not run")
print("deploy: %d magnetar command lines checked" % checked)
