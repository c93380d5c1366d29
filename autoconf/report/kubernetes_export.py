"""A plan as a Kubeflow PyTorchJob (pytorchjob.yaml), for clusters without SLURM.

One pod per node: replica type Master (1 pod, torchrun node rank 0) and Worker (nodes - 1 pods), each running the
same torchrun line as the SLURM script with the operator's RANK (the pod's index, Master 0) as its node rank and the
MASTER_ADDR / MASTER_PORT the operator sets. The plan is mounted from a ConfigMap that the header's kubectl command
creates. Strings are written as JSON strings, which YAML reads as the same strings.
"""

from __future__ import annotations

import json
import re

from autoconf.report.upstream import PYTORCHJOB_API_VERSION, PYTORCHJOB_TARGET
from autoconf.spec.plan import Plan

CONTAINER = "pytorch"  # the container name the training operator looks for
PLAN_DIR = "/etc/autoconf"
IMAGE = "autoconf:latest"  # an image with autoconf installed (scripts/install.sh); replace with yours


JOB_NAME_MAX = 63 - len("-worker-12345")


def job_name(plan: Plan) -> str:
    """A DNS-1123 label from the model name: lower-case alphanumerics and '-', at most JOB_NAME_MAX characters, so
    that the names the training operator derives from it for pods and services ("-master-0", "-worker-12345") stay
    within Kubernetes' 63."""
    name = re.sub(r"[^a-z0-9-]+", "-", str(plan.model.name).lower()).strip("-")
    return ("autoconf-" + name)[:JOB_NAME_MAX].rstrip("-")


def _replica(count: int, command: str, resources: dict, configmap: str) -> list[str]:
    q = json.dumps
    return [f"      replicas: {count}",
            "      restartPolicy: OnFailure",
            "      template:",
            "        spec:",
            "          containers:",
            f"            - name: {q(CONTAINER)}",
            f"              image: {q(IMAGE)}",
            f"              command: [{q('bash')}, {q('-c')}, {q(command)}]",
            "              env:",
            f"                - {{name: {q('OMP_NUM_THREADS')}, value: {q('1')}}}",
            "              resources:",
            "                limits: {" + ", ".join(f"{q(k)}: {v}" for k, v in resources.items()) + "}",
            "              volumeMounts:",
            f"                - {{name: {q('plan')}, mountPath: {q(PLAN_DIR)}, readOnly: true}}",
            "          volumes:",
            f"            - {{name: {q('plan')}, configMap: {{name: {q(configmap)}}}}}"]


def pytorchjob_yaml(plan: Plan, torchrun_line: str, summary: str, plan_file: str, cpu: bool) -> str:
    """The manifest text. `torchrun_line` is the torchrun command with "$RANK" as node rank and "$PLAN" as plan
    path; `plan_file` is the local plan path for the kubectl command in the header, shell-quoted and safe in a
    comment (exporters.comment_text)."""
    nodes, gpus = int(plan.cluster.get("nodes", 1)), int(plan.cluster.get("gpus_per_node", 1))
    command = f"export PLAN={PLAN_DIR}/plan.json STEPS=${{STEPS:-100}}; exec {torchrun_line}"
    resources = {"cpu": gpus} if cpu else {"nvidia.com/gpu": gpus}
    configmap = job_name(plan) + "-plan"
    lines = [f"# {summary}",
             f"# Targets {PYTORCHJOB_TARGET}. First store the plan where the pods mount it:",
             f"#   kubectl create configmap {configmap} --from-file=plan.json={plan_file}",
             "# then: kubectl apply -f pytorchjob.yaml",
             f"apiVersion: {json.dumps(PYTORCHJOB_API_VERSION)}",
             "kind: \"PyTorchJob\"",
             "metadata:",
             f"  name: {json.dumps(job_name(plan))}",
             "spec:",
             f"  nprocPerNode: {json.dumps(str(gpus))}",
             "  pytorchReplicaSpecs:",
             "    Master:"]
    lines += _replica(1, command, resources, configmap)
    if nodes > 1:
        lines += ["    Worker:"] + _replica(nodes - 1, command, resources, configmap)
    return "\n".join(lines) + "\n"
