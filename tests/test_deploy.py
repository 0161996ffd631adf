"""deploy/: the cluster and job definitions parse, have the keys their tools need, and every
`dipfill run` command line in them (and in their docs) uses flags the real CLI has.

No cluster, no network: YAML is parsed, commands are checked against
``dipfill.cli.main.build_parser()``, and the run config goes through ``merged`` and
``build_request`` exactly as ``dipfill run --config`` would.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import re
import runpy
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

yaml = pytest.importorskip("yaml")

from dipfill.cli.main import build_parser  # noqa: E402
from dipfill.cli.run import CONFIG_KEYS, build_request, merged  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RUN_YAML = DEPLOY / "run.yaml"
YAML_FILES = sorted(DEPLOY.glob("*.yaml"))
K8S_FILES = ("rayjob.yaml", "raycronjob.yaml", "raycluster.yaml", "cronjob.yaml")
CRON_RE = re.compile(r"^(\S+\s+){4}\S+$")
OPERATORS = {"&&", "||", ";", "|", "&", ";;", "(", ")", ">", "<", ">>"}


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


def check_against_run_yaml(args: list[str], where: str) -> dict[str, Any]:
    """Parse the command with its --config pointed at deploy/run.yaml; merged + build_request
    must accept the result (flags over the config), as the deployed command would."""
    args = list(args)
    assert "--config" in args, f"{where}: no --config"
    args[args.index("--config") + 1] = str(RUN_YAML)
    values = merged(parse_run(args, where))
    build_request(values)
    return values


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
    for doc in load(name):
        assert doc.get("apiVersion") and doc.get("kind"), f"{name}: object without apiVersion/kind"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]["name"]
    api = {d["kind"]: d["apiVersion"] for d in load(name)}
    for kind in ("RayJob", "RayCronJob", "RayCluster"):
        if kind in api:
            assert api[kind] == "ray.io/v1"
    if "CronJob" in api:
        assert api["CronJob"] == "batch/v1"
    for kind in ("ConfigMap", "PersistentVolumeClaim"):
        if kind in api:
            assert api[kind] == "v1"


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


def _check_rayjob_spec(name: str, spec: dict[str, Any], *, cron: bool) -> dict[str, Any]:
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert "headGroupSpec" in spec["rayClusterSpec"] and spec["rayClusterSpec"]["workerGroupSpecs"]
    args = dipfill_run_args(shlex.split(spec["entrypoint"]))
    ns = parse_run(args, f"{name} entrypoint")
    assert ns.ray_address == "auto", f"{name}: join the job's cluster with --ray-address auto"
    assert ns.since == ("7d" if cron else None), f"{name}: --since"
    # the config the entrypoint names is the ConfigMap mounted on the head (the driver runs there)
    head_mounts = mounts(spec["rayClusterSpec"]["headGroupSpec"]["template"])
    config_dir = str(Path(ns.config).parent)
    mounted = [m for m in head_mounts.values() if m["mountPath"] == config_dir]
    assert mounted and mounted[0]["configMap"]["name"] == "dipfill-run-config", f"{name}: {ns.config} not mounted"
    assert Path(ns.config).name in {"run.yaml"}
    values = check_against_run_yaml(args, f"{name} entrypoint")
    return values


def test_rayjob():
    job = one("rayjob.yaml", "RayJob")
    values = _check_rayjob_spec("rayjob.yaml", job["spec"], cron=False)
    assert "since" not in values


def test_raycronjob():
    cron = one("raycronjob.yaml", "RayCronJob")
    assert CRON_RE.match(cron["spec"]["schedule"]), cron["spec"]["schedule"]
    template = cron["spec"]["jobTemplate"]
    assert "spec" not in template, "RayCronJob.jobTemplate is a RayJob spec itself (no spec: wrapper)"
    values = _check_rayjob_spec("raycronjob.yaml", template, cron=True)
    assert values["since"] == "7d"
    text = (DEPLOY / "raycronjob.yaml").read_text().lower()
    assert "alpha" in text and "feature" in text


def test_raycluster_is_the_cronjob_target():
    cluster = one("raycluster.yaml", "RayCluster")
    cronjob = one("cronjob.yaml", "CronJob")
    script = " ".join(containers(cronjob["spec"]["jobTemplate"]["spec"]["template"])[0].get("args", []))
    assert f"http://{cluster['metadata']['name']}-head-svc:8265" in script


# ------------------------------------------------------------------------ plain CronJob
def test_cronjob_submits_with_ray_job_submit():
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
    args = dipfill_run_args(tokens)
    ns = parse_run(args, "cronjob.yaml command")
    assert ns.since == "7d" and ns.ray_address == "auto"
    # the config travels in the working directory: the script copies the mounted ConfigMap there
    assert f"/config/{ns.config}" in script and "cp /config/" in script
    config_mounts = [m for m in mounts(pod).values() if m["mountPath"] == "/config"]
    assert config_mounts and config_mounts[0]["configMap"]["name"] == "dipfill-run-config"
    values = check_against_run_yaml(args, "cronjob.yaml command")
    assert values["since"] == "7d"


# ------------------------------------------------------------------- shared K8s objects
def test_configmaps_are_copies_of_run_yaml():
    text = RUN_YAML.read_text()
    found = 0
    for name in K8S_FILES:
        for doc in load(name):
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "dipfill-run-config":
                assert doc["data"]["run.yaml"] == text, f"{name}: ConfigMap differs from deploy/run.yaml"
                found += 1
    assert found >= 3


def test_output_claims_agree_and_are_read_write_many():
    claims = [d for n in K8S_FILES for d in load(n) if d["kind"] == "PersistentVolumeClaim"]
    assert claims and all(c["metadata"]["name"] == "dipfill-out" for c in claims)
    assert all(c["spec"] == claims[0]["spec"] for c in claims)
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_one_image_everywhere():
    images = {yaml.safe_load((DEPLOY / "cluster.yaml").read_text())["docker"]["image"]}
    for name in K8S_FILES:
        text = (DEPLOY / name).read_text()
        images |= set(re.findall(r"^\s*image:\s*(\S+)", text, re.M))
    assert len(images) == 1, images


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
    text = (DEPLOY / "cluster.yaml").read_text()
    assert "gcp" in text.lower() and "nvidia-tesla-t4" in text and "L4" in text


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
    args = build_parser().parse_args(["run", "--config", str(RUN_YAML)])
    values = merged(args)
    request = build_request(values)
    doc = yaml.safe_load(RUN_YAML.read_text())
    assert request.stac == doc["stac"] and request.out == doc["out"]
    assert request.options.engine == doc.get("engine", "dip")
    assert request.options.batch_size == doc.get("batch_size", 4)
    if doc.get("bbox"):
        assert request.bbox == tuple(doc["bbox"])
    # cron's override on top of the same config
    args = build_parser().parse_args(["run", "--config", str(RUN_YAML), "--since", "7d"])
    assert build_request(merged(args)).since == "7d"


def test_run_yaml_datetime_leaves_room_for_cron():
    """`--since 7d` intersects the config's datetime range: it must reach the present."""
    from dipfill.stac.search import SearchQuery

    doc = yaml.safe_load(RUN_YAML.read_text())
    if doc.get("datetime") is None:
        return
    start, end = SearchQuery(datetime=str(doc["datetime"])).datetime
    assert end is None, "an open-ended datetime range (START/..), or none, so cron runs find new scenes"


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
def test_ray_submit_script_runs_dipfill_run(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dipfill_run.py", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(DEPLOY / "dipfill_run.py"), run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: dipfill run" in out and "--ray-address" in out


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
    options = run_options()
    checked = 0
    for where, line in _doc_lines():
        for marker in ("dipfill run ", "dipfill_run.py -- "):
            args = _command_args_in_line(line, marker)
            if not args:
                continue
            flags = {a.split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2}
            unknown = sorted(flags - options)
            assert not unknown, f"{where}: `dipfill run` has no {', '.join(unknown)}: {line.strip()}"
            checked += bool(flags)
    assert checked >= 8


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
