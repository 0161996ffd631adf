"""deploy/: the cluster and job definitions parse, have the keys their tools need, and every
`dipfill run` command line in them (and in their docs) uses flags the real CLI has.

No cluster, no network: YAML is parsed, commands are checked against
``dipfill.cli.main.build_parser()``, and the run config goes through ``merged`` and
``build_request`` exactly as ``dipfill run --config`` would.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.util
import io
import json
import logging
import re
import runpy
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

yaml = pytest.importorskip("yaml")

from dipfill.cli import logs  # noqa: E402
from dipfill.cli.main import build_parser  # noqa: E402
from dipfill.cli.run import CONFIG_KEYS, build_request, merged  # noqa: E402
from dipfill.pipeline.run import parse_since  # noqa: E402
from dipfill.specs import FillOptions, RunRequest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RUN_YAML = DEPLOY / "run.yaml"
YAML_FILES = sorted(DEPLOY.glob("*.yaml"))
K8S_FILES = ("rayjob.yaml", "raycronjob.yaml", "raycluster.yaml", "cronjob.yaml")
CRON_RE = re.compile(r"^(\S+\s+){4}\S+$")
OPERATORS = {"&&", "||", ";", "|", "&", ";;", "(", ")", ">", "<", ">>"}
API_VERSIONS = {"RayJob": "ray.io/v1", "RayCronJob": "ray.io/v1", "RayCluster": "ray.io/v1",
                "CronJob": "batch/v1", "ConfigMap": "v1", "PersistentVolumeClaim": "v1"}
FILL_KEYS = {f.name for f in dataclasses.fields(FillOptions)} - {"engine_options"}
DIP_KEYS = ("preset", "steps", "lr", "stopping", "patience", "strategy", "device")
REQUEST_KEYS = {f.name for f in dataclasses.fields(RunRequest)}


# ----------------------------------------------------------------------------- helpers
def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


def one(name: str, kind: str) -> dict[str, Any]:
    docs = [d for d in load(name) if d.get("kind") == kind]
    assert len(docs) == 1, f"{name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices["run"]


def run_options() -> set[str]:
    return set(run_parser()._option_string_actions)


def dipfill_run_args(tokens: list[str]) -> list[str]:
    """The arguments after the first ``dipfill run`` in a token list, up to a shell operator."""
    for i in range(len(tokens) - 1):
        if tokens[i] == "dipfill" and tokens[i + 1] == "run":
            args = []
            for tok in tokens[i + 2:]:
                if tok in OPERATORS:
                    break
                args.append(tok)
            return args
    raise AssertionError(f"no 'dipfill run' in {tokens}")


def shell_tokens(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def parse_run(args: list[str], where: str) -> argparse.Namespace:
    """Parse ``dipfill run ARGS`` with the real parser; a usage error fails the test."""
    unknown = sorted({a.split("=", 1)[0] for a in args if a.startswith("--")} - run_options())
    assert not unknown, f"{where}: `dipfill run` has no {', '.join(unknown)}"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(["run", *args])
    except SystemExit:
        raise AssertionError(f"{where}: dipfill run {' '.join(args)}: {err.getvalue().strip()}") from None


def check_against_run_yaml(args: list[str], where: str) -> tuple[dict[str, Any], RunRequest]:
    """Parse the command with its --config pointed at deploy/run.yaml; merged + build_request
    must accept the result (flags over the config), as the deployed command would. Returns
    the merged values and the RunRequest the command would run."""
    args = list(args)
    assert "--config" in args, f"{where}: no --config"
    args[args.index("--config") + 1] = str(RUN_YAML)
    values = merged(parse_run(args, where))
    return values, build_request(values)


def run_yaml_request(*flags: str) -> RunRequest:
    """The RunRequest of ``dipfill run --config deploy/run.yaml FLAGS``."""
    return build_request(merged(parse_run(["--config", str(RUN_YAML), *flags], "deploy/run.yaml")))


def request_value(request: RunRequest, values: dict[str, Any], key: str) -> Any:
    """What ``build_request`` made of run-config key ``key``, read back from the RunRequest
    in the YAML's own terms (so that it can be compared with the YAML value)."""
    if key in FILL_KEYS:
        return getattr(request.options, key)
    if key in DIP_KEYS:
        return request.options.engine_options.get(key)
    if key == "collection":
        return list(request.collections)
    if key == "bbox":
        return list(request.bbox) if request.bbox else None
    if key == "mask":
        return {"fill": "gaps", "clouds": "clouds"}[request.mask]
    if key == "ray_address":  # not part of the request: `dipfill run` hands it to Ray
        return values.get("ray_address")
    if key in REQUEST_KEYS:
        return getattr(request, key)
    raise AssertionError(f"run config key {key!r}: this test does not know where build_request puts it")


def entry_env(tokens: list[str]) -> dict[str, str]:
    """The ``NAME=value`` assignments right before ``dipfill run`` (the shell sets them for it)."""
    i = next(i for i in range(len(tokens) - 1) if tokens[i:i + 2] == ["dipfill", "run"])
    env = {}
    while i > 0 and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[i - 1]):
        i -= 1
        key, value = tokens[i].split("=", 1)
        env[key] = value
    return env


def check_env(env: dict[str, str], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command asks for JSON logs (one object per line, for the cluster's log shipper) the
    way dipfill reads them: ``dipfill.cli.logs.configure`` picks that format from the
    environment (an unknown variable is ignored, an unknown value falls back to text)."""
    assert env == {"DIPFILL_LOG_FORMAT": "json"}, f"{where}: environment {env}"
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # resolve the format, configure nothing
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert logs.configure(logging.WARNING) == "json", f"{where}: log format"


def cron_period(schedule: str) -> dt.timedelta:
    """The period of a daily (``M H * * *``) or weekly (``M H * * D``) cron schedule."""
    minute, hour, dom, month, dow = schedule.split()
    assert minute.isdigit() and hour.isdigit() and dom == "*" and month == "*", f"{schedule}: not daily or weekly"
    assert dow == "*" or dow.isdigit(), f"{schedule}: not daily or weekly"
    return dt.timedelta(days=1 if dow == "*" else 7)


def command_args(tokens: list[str], name: str) -> list[str]:
    """The arguments of the first ``name`` command in a shell token list, up to an operator."""
    assert name in tokens, f"no {name} command"
    args = []
    for tok in tokens[tokens.index(name) + 1:]:
        if tok in OPERATORS:
            break
        args.append(tok)
    return args


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a parsed YAML document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


def gpu_limit(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def mounts(pod_template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """volume name -> volume, for the volumes the first container mounts, with its mountPath."""
    volumes = {v["name"]: v for v in pod_template["spec"].get("volumes", [])}
    out = {}
    for m in containers(pod_template)[0].get("volumeMounts", []):
        assert m["name"] in volumes, f"volumeMount {m['name']} has no volume"
        out[m["name"]] = {**volumes[m["name"]], "mountPath": m["mountPath"]}
    return out


def ray_cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "rayjob.yaml", one("rayjob.yaml", "RayJob")["spec"]["rayClusterSpec"]
    yield "raycronjob.yaml", one("raycronjob.yaml", "RayCronJob")["spec"]["jobTemplate"]["rayClusterSpec"]
    yield "raycluster.yaml", one("raycluster.yaml", "RayCluster")["spec"]


def dockerfile_ray_version() -> str:
    m = re.search(r"^ARG RAY_VERSION=(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert m, "Dockerfile: no ARG RAY_VERSION=..."
    return m.group(1)


# ------------------------------------------------------------------------------ parsing
def test_deploy_files_exist():
    for name in ("cluster.yaml", "Dockerfile", "rayjob.yaml", "raycronjob.yaml", "cronjob.yaml", "run.yaml",
                 "README.md"):
        assert (DEPLOY / name).is_file(), name


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_every_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("name", K8S_FILES)
def test_kubernetes_objects_have_kind_api_version_and_name(name):
    docs = load(name)
    assert docs, f"{name}: no objects"
    for doc in docs:
        assert doc.get("kind") in API_VERSIONS, f"{name}: unexpected kind {doc.get('kind')!r}"
        assert doc.get("apiVersion") == API_VERSIONS[doc["kind"]], f"{name}: {doc['kind']} apiVersion"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]["name"]


# ---------------------------------------------------------------------------- KubeRay
@pytest.mark.parametrize("name,spec", list(ray_cluster_specs()), ids=[n for n, _ in ray_cluster_specs()])
def test_ray_cluster_spec_cpu_head_gpu_workers(name, spec):
    assert spec["rayVersion"] == dockerfile_ray_version(), f"{name}: rayVersion differs from the image's Ray"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", f"{name}: the head must do no work"
    assert all(gpu_limit(c) == 0 for c in containers(head["template"])), f"{name}: GPU on the head"
    groups = spec["workerGroupSpecs"]
    assert groups, f"{name}: no worker group"
    gpu_groups = [g for g in groups if any(gpu_limit(c) >= 1 for c in containers(g["template"]))]
    assert gpu_groups, f"{name}: no worker group with nvidia.com/gpu limits"
    for g in groups:
        assert g["groupName"]
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{name}: replicas out of bounds"
        assert isinstance(g.get("rayStartParams"), dict)
    # the shared output volume is mounted at the same path on the head and every worker
    head_out = mounts(head["template"])["out"]
    assert head_out["persistentVolumeClaim"]["claimName"] == "dipfill-out"
    for g in groups:
        worker_out = mounts(g["template"])["out"]
        assert worker_out["mountPath"] == head_out["mountPath"]
        assert worker_out["persistentVolumeClaim"] == head_out["persistentVolumeClaim"]
    out = yaml.safe_load(RUN_YAML.read_text())["out"]
    assert Path(out).is_relative_to(head_out["mountPath"]), f"{name}: run.yaml out {out} is not on the shared volume"


def mounted_run_config(name: str, pod_template: dict[str, Any], config: str) -> dict[str, Any]:
    """The run config a pod sees at ``config``: the key of the ConfigMap (of file ``name``)
    mounted at its directory, parsed. Fails when nothing is mounted there."""
    path = Path(config)
    mounted = [m for m in mounts(pod_template).values() if m["mountPath"] == str(path.parent)]
    assert len(mounted) == 1 and "configMap" in mounted[0], f"{name}: nothing mounted at {path.parent}"
    assert "items" not in mounted[0]["configMap"], f"{name}: the ConfigMap's keys are its file names"
    configmap = one(name, "ConfigMap")
    assert mounted[0]["configMap"]["name"] == configmap["metadata"]["name"] == "dipfill-run-config"
    assert path.name in configmap["data"], f"{name}: the ConfigMap has no {path.name}"
    return yaml.safe_load(configmap["data"][path.name])


def _check_rayjob_spec(name: str, spec: dict[str, Any], *, cron: bool,
                       monkeypatch: pytest.MonkeyPatch) -> RunRequest:
    """The RayJob's entrypoint is `dipfill run` on the job's own cluster with the mounted
    run config: returns the RunRequest it runs."""
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert "headGroupSpec" in spec["rayClusterSpec"] and spec["rayClusterSpec"]["workerGroupSpecs"]
    tokens = shlex.split(spec["entrypoint"])
    check_env(entry_env(tokens), f"{name} entrypoint", monkeypatch)
    args = dipfill_run_args(tokens)
    ns = parse_run(args, f"{name} entrypoint")
    assert ns.ray_address == "auto", f"{name}: join the job's cluster with --ray-address auto"
    assert ns.since == ("7d" if cron else None), f"{name}: --since"
    # the config the entrypoint names is deploy/run.yaml, mounted on the head (the driver runs there)
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]
    assert mounted_run_config(name, head, ns.config) == yaml.safe_load(RUN_YAML.read_text())
    values, request = check_against_run_yaml(args, f"{name} entrypoint")
    assert values["ray_address"] == "auto"
    # the entrypoint adds the cluster address and (cron) the update window to run.yaml, nothing else
    assert dataclasses.replace(request, since=None) == run_yaml_request()
    assert request.since == ("7d" if cron else None)
    return request


def test_rayjob(monkeypatch):
    job = one("rayjob.yaml", "RayJob")
    request = _check_rayjob_spec("rayjob.yaml", job["spec"], cron=False, monkeypatch=monkeypatch)
    assert request.since is None
    assert request.options.engine == "dip" and request.options.engine_options["preset"] == "landsat2020"
    # the driver (head) and the workers write under --out: it is on the shared volume of both
    cluster = job["spec"]["rayClusterSpec"]
    for template in [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]:
        assert Path(request.out).is_relative_to(mounts(template)["out"]["mountPath"])


def test_raycronjob(monkeypatch):
    cron = one("raycronjob.yaml", "RayCronJob")
    spec = cron["spec"]
    assert CRON_RE.match(spec["schedule"]), spec["schedule"]
    # only the fields of KubeRay v1.6's alpha RayCronJob (spec.timeZone needs v1.7)
    assert set(spec) <= {"schedule", "jobTemplate", "suspend"}, sorted(spec)
    template = spec["jobTemplate"]
    assert "spec" not in template, "RayCronJob.jobTemplate is a RayJob spec itself (no spec: wrapper)"
    request = _check_rayjob_spec("raycronjob.yaml", template, cron=True, monkeypatch=monkeypatch)
    assert request.since == "7d"
    # one run ends before the next starts, and each run's window covers the time since the last
    period = cron_period(spec["schedule"])
    assert dt.timedelta(seconds=template["activeDeadlineSeconds"]) < period
    assert parse_since(request.since) > period


def test_raycluster_is_the_cronjob_target():
    cluster = one("raycluster.yaml", "RayCluster")
    cronjob = one("cronjob.yaml", "CronJob")
    script = " ".join(containers(cronjob["spec"]["jobTemplate"]["spec"]["template"])[0].get("args", []))
    assert f"http://{cluster['metadata']['name']}-head-svc:8265" in script


# ------------------------------------------------------------------------ plain CronJob
def test_cronjob_submits_with_ray_job_submit(monkeypatch):
    cronjob = one("cronjob.yaml", "CronJob")
    spec = cronjob["spec"]
    assert CRON_RE.match(spec["schedule"]), spec["schedule"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]
    assert pod["spec"]["restartPolicy"] in ("Never", "OnFailure")
    container = containers(pod)[0]
    assert container["image"]
    script = "\n".join([*container.get("command", []), *container.get("args", [])])
    lines = [ln for ln in script.splitlines() if "ray job submit" in ln]
    assert len(lines) == 1, "one `ray job submit` line"
    tokens = shell_tokens(lines[0])
    submit = tokens[tokens.index("ray"):tokens.index("--", tokens.index("ray"))]
    assert submit[:3] == ["ray", "job", "submit"]
    address = submit[submit.index("--address") + 1]
    assert re.fullmatch(r"http://[a-z0-9.-]+:8265", address), address
    assert submit[submit.index("--working-dir") + 1] == "."
    check_env(entry_env(tokens), "cronjob.yaml command", monkeypatch)
    args = dipfill_run_args(tokens)
    ns = parse_run(args, "cronjob.yaml command")
    assert ns.since == "7d" and ns.ray_address == "auto"
    # the config travels in the working directory: the script copies the mounted ConfigMap's
    # run.yaml to DIR/<--config>, changes to DIR, and submits "." as the job's working directory
    all_tokens = [tok for line in script.splitlines() for tok in (*shell_tokens(line), ";")]  # newline ends a command
    src, dst = command_args(all_tokens, "cp")
    (workdir,) = command_args(all_tokens, "cd")
    assert all_tokens.index("cp") < all_tokens.index("cd") < all_tokens.index("ray")
    assert not Path(ns.config).is_absolute() and Path(dst) == Path(workdir) / ns.config
    assert mounted_run_config("cronjob.yaml", pod, src) == yaml.safe_load(RUN_YAML.read_text())
    values, request = check_against_run_yaml(args, "cronjob.yaml command")
    assert values["ray_address"] == "auto" and request.since == "7d"
    assert dataclasses.replace(request, since=None) == run_yaml_request()
    # one run ends before the next starts, and each run's window covers the time since the last
    period = cron_period(spec["schedule"])
    assert dt.timedelta(seconds=spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]) < period
    assert parse_since(request.since) > period


def submit_parts(line: str, where: str) -> tuple[list[str], dict[str, str], argparse.Namespace]:
    """A `ray job submit ... -- [ENV=value] dipfill run ...` line: the submit command's own
    tokens (up to ``--``), the entrypoint's environment and its parsed `dipfill run`."""
    tokens = shell_tokens(line)
    start = tokens.index("ray")
    submit = tokens[start:tokens.index("--", start)]
    assert submit[:3] == ["ray", "job", "submit"], f"{where}: {submit}"
    return submit, entry_env(tokens), parse_run(dipfill_run_args(tokens), where)


def test_tested_ray_job_is_the_deployed_command():
    """tests/test_ray_jobs.py submits README's Ray Jobs command (tests._ray.JOB_COMMAND) to
    a real cluster: it has the form of deploy/'s submission (cronjob.yaml's `ray job submit`)
    and of the RayJob entrypoints, differing only in the run's own flags (the demo catalog
    as flags, deploy/run.yaml through --config there)."""
    from tests._ray import JOB_COMMAND

    readme = (ROOT / "README.md").read_text()
    assert JOB_COMMAND in readme, "README.md does not show the tested `ray job submit` command as it is"
    ours, our_env, ns = submit_parts(JOB_COMMAND, "tests._ray.JOB_COMMAND")
    cronjob = one("cronjob.yaml", "CronJob")
    script = "\n".join(containers(cronjob["spec"]["jobTemplate"]["spec"]["template"])[0].get("args", []))
    (line,) = [ln for ln in script.splitlines() if "ray job submit" in ln]
    theirs, their_env, deployed = submit_parts(line, "cronjob.yaml")
    # the same submit options, the working dir "." in both, the dashboard's port 8265
    assert [t for t in ours if t.startswith("--")] == [t for t in theirs if t.startswith("--")], (ours, theirs)
    assert ours[ours.index("--working-dir") + 1] == theirs[theirs.index("--working-dir") + 1] == "."
    assert ours[ours.index("--address") + 1].endswith(":8265")
    # the same entrypoint: JSON logs, `dipfill run` joining the job's cluster
    assert our_env == their_env == {"DIPFILL_LOG_FORMAT": "json"}
    assert ns.ray_address == deployed.ray_address == "auto"
    for name in ("rayjob.yaml", "raycronjob.yaml"):
        spec = one(name, "RayJob")["spec"] if name == "rayjob.yaml" else \
            one(name, "RayCronJob")["spec"]["jobTemplate"]
        tokens = shlex.split(spec["entrypoint"])
        assert entry_env(tokens) == our_env and parse_run(dipfill_run_args(tokens), name).ray_address == "auto"
    # its flags are run-config keys: the same run as a run.yaml with those keys
    request = build_request(merged(ns))
    assert request.stac == "data/arg25_menindee/stac" and request.options.engine == "fillnodata"
    assert Path(request.out).is_absolute(), "a relative --out would land in the job's copy of the working dir"


# ------------------------------------------------------------------- shared K8s objects
def test_configmaps_are_copies_of_run_yaml():
    text = RUN_YAML.read_text()
    found = []
    for name in K8S_FILES:
        for doc in load(name):
            if doc["kind"] == "ConfigMap":
                assert doc["metadata"]["name"] == "dipfill-run-config", f"{name}: {doc['metadata']['name']}"
                assert doc["data"] == {"run.yaml": text}, f"{name}: ConfigMap differs from deploy/run.yaml"
                found.append(name)
    # every manifest that runs `dipfill run --config` ships the config; the bare cluster does not
    assert sorted(found) == ["cronjob.yaml", "raycronjob.yaml", "rayjob.yaml"]


def test_output_claims_agree_and_are_read_write_many():
    claims = [d for n in K8S_FILES for d in load(n) if d["kind"] == "PersistentVolumeClaim"]
    assert claims and all(c["metadata"]["name"] == "dipfill-out" for c in claims)
    assert all(c["spec"] == claims[0]["spec"] for c in claims)
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_one_image_everywhere():
    image = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())["docker"]["image"]
    assert image
    for name in K8S_FILES:
        pods = [n for doc in load(name) for n in walk(doc) if "containers" in n]
        assert pods, f"{name}: no pod template"
        for pod in pods:
            for container in pod["containers"]:
                assert container.get("image") == image, f"{name}: container {container['name']}"


def test_credentials_come_from_secrets_not_literals():
    for name in K8S_FILES:
        for doc in load(name):
            text = json.dumps(doc)
            assert not re.search(r"AKIA[0-9A-Z]{16}", text)
            assert "AWS_SECRET_ACCESS_KEY" not in text
    run = yaml.safe_load(RUN_YAML.read_text())
    assert not any(re.search(r"[?&](sig|se|X-Amz-Signature|token)=", str(v), re.I) for v in run.values())


# ------------------------------------------------------------------------ cluster.yaml
def test_cluster_yaml_shape():
    c = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    assert c["cluster_name"]
    provider = c["provider"]
    assert provider["type"] == "aws" and provider["region"] and provider["availability_zone"]
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must advertise no CPU (does no work)"
    assert not head["resources"].get("GPU")
    workers = [t for n, t in types.items() if n != c["head_node_type"]]
    gpu = [t for t in workers if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "no GPU worker type"
    for t in gpu:
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert 0 <= t["min_workers"] <= t["max_workers"] <= c["max_workers"]
        assert re.match(r"(g|p)\d", t["node_config"]["InstanceType"]), t["node_config"]["InstanceType"]
    assert c["docker"]["image"]
    # nothing beyond the image (an absent key would get Ray's defaults, which pip-install)
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert c[key] == [], key
    assert c["file_mounts"] == {}


def test_cluster_yaml_shares_out_and_joins_workers_to_the_head():
    """What the launcher config does: the container's /data is a host directory on the shared
    NFS mount (run.yaml's --out is under it), and the workers join the head's GCS port."""
    c = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    binds = [shlex.split(o)[1] for o in c["docker"]["run_options"] if shlex.split(o)[0] == "-v"]
    assert len(binds) == 1, binds
    host, container = binds[0].split(":")[:2]
    assert Path(run_yaml_request().out).is_relative_to(container), "run.yaml out is not on the shared mount"
    init = [shell_tokens(cmd) for cmd in c["initialization_commands"]]
    mount_points = [command_args(toks, "mount")[-1] for toks in init if "mount" in toks]
    assert len(mount_points) == 1 and Path(host).is_relative_to(mount_points[0]), (host, mount_points)
    assert any(host in command_args(toks, "mkdir") for toks in init if "mkdir" in toks), f"no mkdir of {host}"
    head = [t for cmd in c["head_start_ray_commands"] for t in shell_tokens(cmd)]
    worker = [t for cmd in c["worker_start_ray_commands"] for t in shell_tokens(cmd)]
    assert command_args(head, "start")[0] == "--head"
    port = next(a.split("=", 1)[1] for a in command_args(head, "start") if a.startswith("--port="))
    address = next(a.split("=", 1)[1] for a in command_args(worker, "start") if a.startswith("--address="))
    assert address == f"$RAY_HEAD_IP:{port}", address


def test_cluster_yaml_matches_rays_schema():
    spec = importlib.util.find_spec("ray")
    jsonschema = pytest.importorskip("jsonschema")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed: its cluster config schema is not available")
    schema = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    if not schema.is_file():
        pytest.skip(f"no {schema}")
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    jsonschema.validate(config, json.loads(schema.read_text()))


# ----------------------------------------------------------------------------- run.yaml
def test_run_yaml_keys_are_config_keys():
    doc = yaml.safe_load(RUN_YAML.read_text())
    assert isinstance(doc, dict)
    assert set(k.replace("-", "_") for k in doc) <= set(CONFIG_KEYS)
    for key in ("stac", "out"):
        assert doc.get(key)


def test_run_yaml_goes_through_merged_and_build_request():
    """Every key of run.yaml reaches the RunRequest `dipfill run --config` builds, with its value."""
    doc = yaml.safe_load(RUN_YAML.read_text())
    values = merged(parse_run(["--config", str(RUN_YAML)], "deploy/run.yaml"))
    request = build_request(values)
    for key, value in doc.items():
        assert request_value(request, values, key.replace("-", "_")) == value, f"run.yaml {key}: {value!r}"
    # what the deployment relies on, spelled out
    assert (request.stac, request.out, request.sign) == (doc["stac"], doc["out"], "planetary-computer")
    assert request.collections == ("landsat-c2-l2",) and request.mask == "clouds"
    assert request.options.engine == "dip" and request.options.batch_size == 8
    opts = request.options.engine_options
    assert (opts["preset"], opts["stopping"], opts["strategy"]) == ("landsat2020", "holdout", "auto")
    # what run.yaml leaves out takes the option records' defaults
    assert (request.options.patch, request.options.overlap) == (FillOptions.patch, FillOptions.overlap)
    assert request.since is None and request.force is False and request.publish is None
    # flags on the command line win over the config, and only for what they name
    over = run_yaml_request("--since", "7d", "--batch-size", "2", "--preset", "mcpn-core", "--patch", "128")
    assert over.since == "7d" and over.options.batch_size == 2 and over.options.patch == 128
    assert over.options.engine_options["preset"] == "mcpn-core"
    assert over.options.engine_options["stopping"] == "holdout" and over.bbox == request.bbox


def test_cron_run_finds_recently_updated_scenes_only(monkeypatch):
    """The search a cron run (`--config run.yaml --since 7d`) sends matches a scene acquired or
    reprocessed yesterday in the run's area, and not one last changed a month ago: the
    config's datetime range must reach the present (open-ended, or none)."""
    import dipfill.pipeline.run as pipeline_run
    from dipfill.stac.query import item_matches

    request = run_yaml_request("--since", "7d")
    queries = []
    checked = []

    class _Source:  # the API is not asked (no traffic beyond 127.0.0.1): only what would be sent
        def __init__(self, url: str) -> None:
            self.url = url

        def check_collections(self, ids: tuple[str, ...]) -> None:
            checked.extend(ids)

    monkeypatch.setattr(pipeline_run, "open_source", _Source)
    monkeypatch.setattr(pipeline_run, "search", lambda source, query: queries.append((source.url, query)) or [])
    assert pipeline_run.find_scenes(request) == []
    ((stac, query),) = queries
    assert stac == request.stac and checked == list(request.collections)

    now = dt.datetime.now(dt.timezone.utc)
    w, s, e, n = request.bbox
    cx, cy = (w + e) / 2, (s + n) / 2

    def item(acquired: dt.datetime, updated: dt.datetime) -> dict[str, Any]:
        return {
            "type": "Feature", "stac_version": "1.0.0", "id": "x", "collection": request.collections[0],
            "bbox": [cx - 0.1, cy - 0.1, cx + 0.1, cy + 0.1],
            "geometry": {"type": "Polygon", "coordinates": [[[cx - 0.1, cy - 0.1], [cx + 0.1, cy - 0.1],
                                                             [cx + 0.1, cy + 0.1], [cx - 0.1, cy + 0.1],
                                                             [cx - 0.1, cy - 0.1]]]},
            "properties": {"datetime": acquired.isoformat(), "updated": updated.isoformat(), "eo:cloud_cover": 1.0},
        }

    day, month = dt.timedelta(days=1), dt.timedelta(days=30)
    assert item_matches(item(now - day, now - day), query), "a scene acquired yesterday is not found"
    assert item_matches(item(now - month, now - day), query), "a scene reprocessed yesterday is not found"
    assert not item_matches(item(now - month, now - month), query), "--since 7d let a month-old scene through"


# ---------------------------------------------------------------------------- Dockerfile
def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert froms and re.search(r"cuda|gpu", froms[-1], re.I), froms
    runs = " ".join(ln for ln in lines if not ln.upper().startswith(("FROM ", "ARG ", "ENV ", "LABEL ")))
    assert re.search(r"pip install\b[^\n]*?(\s\.(\s|$)|/home/ray/dipfill)", runs), "pip install of the package"
    assert "ray[default]" in text and "rasterio" in text and "torch" in text
    assert "--only-binary" in text, "rasterio from a wheel (bundled GDAL), never built from source"
    copies = [ln for ln in lines if ln.upper().startswith("COPY ")]
    assert copies, "the repository is copied into the image"
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "runs as a non-root user"
    assert not any(ln.upper().startswith(("ENTRYPOINT", "CMD")) for ln in lines), "Ray supplies the commands"


# -------------------------------------------------------------------- ray submit script
class _Submitted(Exception):
    """Raised by the stand-in for the pipeline: what `dipfill run` would have run."""


def test_ray_submit_script_runs_dipfill_run(monkeypatch, capsys):
    """`ray submit ... dipfill_run.py -- ARGS` is `dipfill run ARGS`: the script's arguments
    reach the run pipeline as the RunRequest and Ray address the CLI would build."""
    import dipfill.pipeline.run as pipeline_run

    def submitted(request, *, ray_address=None, **kwargs):
        raise _Submitted(request, ray_address)

    monkeypatch.setattr(pipeline_run, "run", submitted)
    monkeypatch.setattr(sys, "argv", ["dipfill_run.py", "--config", str(RUN_YAML), "--ray-address", "auto",
                                      "--since", "7d"])
    with pytest.raises(_Submitted) as exc:
        runpy.run_path(str(DEPLOY / "dipfill_run.py"), run_name="__main__")
    request, ray_address = exc.value.args
    assert ray_address == "auto"
    assert request == run_yaml_request("--since", "7d")
    # and its --help is `dipfill run`'s
    monkeypatch.setattr(sys, "argv", ["dipfill_run.py", "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(DEPLOY / "dipfill_run.py"), run_name="__main__")
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage: dipfill run")


# ------------------------------------------------------------------ commands in the docs
_SPAN = re.compile(r"(`+)(.+?)\1")


def _command_args_in_line(line: str, marker: str) -> list[str] | None:
    """The arguments after ``marker`` on a documentation line: within its inline code span or
    quotes when it is in one, up to a shell operator or line continuation."""
    pos = line.find(marker)
    if pos < 0:
        return None
    for m in _SPAN.finditer(line):
        if m.start(2) <= pos < m.end(2):
            line, pos = m.group(2), pos - m.start(2)
            break
    rest = line[pos + len(marker):]
    if pos > 0 and line[pos - 1] in "'\"":
        rest = rest.split(line[pos - 1], 1)[0]
    rest = re.split(r"\s(?:&&|\|\||;|\|)\s|\s\\$|`", rest, maxsplit=1)[0]
    try:
        return shlex.split(rest)
    except ValueError:
        return rest.split()


def _doc_lines() -> Iterator[tuple[str, str]]:
    for path in sorted(DEPLOY.iterdir()):
        if path.is_file() and path.suffix in (".md", ".yaml", ".py", ""):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                yield f"deploy/{path.name}:{n}", line
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"^## Running at scale.*?(?=^## )", readme, re.M | re.S)
    assert m, "README.md: no '## Running at scale' section before the next section"
    start = readme[: m.start()].count("\n") + 1
    for n, line in enumerate(m.group(0).splitlines(), start):
        yield f"README.md:{n}", line


def test_documented_commands_use_real_flags():
    """Every `dipfill run` in deploy/ and the README uses flags the CLI has; every complete one
    (with a --config FILE) parses with the real parser and, its config pointed at
    deploy/run.yaml, builds a RunRequest in which each flag it gives wins over the config."""
    options = run_options()
    checked = complete = 0
    for where, line in _doc_lines():
        for marker in ("dipfill run ", "dipfill_run.py -- "):
            args = _command_args_in_line(line, marker)
            if not args:
                continue
            flags = {a.split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2}
            unknown = sorted(flags - options)
            assert not unknown, f"{where}: `dipfill run` has no {', '.join(unknown)}: {line.strip()}"
            checked += bool(flags)
            if "--config" in args[:-1] and "..." not in args:
                ns = parse_run(args, where)
                assert Path(ns.config).name == "run.yaml", f"{where}: --config {ns.config}"
                values, request = check_against_run_yaml(args, where)
                for flag in sorted(flags - {"--config"}):
                    dest = run_parser()._option_string_actions[flag].dest
                    assert request_value(request, values, dest) == getattr(ns, dest), f"{where}: {flag}"
                assert request.since is None or parse_since(request.since) > dt.timedelta(0), where
                complete += 1
    assert checked >= 8 and complete >= 12, (checked, complete)


def test_readme_section_comes_before_layout():
    readme = (ROOT / "README.md").read_text()
    assert readme.index("## Running at scale: Ray, KubeRay, cron") < readme.index("## Layout")
    for command in ("ray up deploy/cluster.yaml", "ray submit deploy/cluster.yaml", "ray job submit",
                    "--working-dir .", "kubectl apply -f deploy/rayjob.yaml", "--since 7d"):
        assert command in readme or command in (DEPLOY / "README.md").read_text(), command
    deploy_readme = (DEPLOY / "README.md").read_text()
    for command in ("ray up deploy/cluster.yaml", "ray submit deploy/cluster.yaml", "ray job submit",
                    "--working-dir .", "kubectl apply -f deploy/rayjob.yaml", "--since 7d"):
        assert command in deploy_readme, command
