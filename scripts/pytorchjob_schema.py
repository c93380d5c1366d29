"""Extracts the PyTorchJob schema (the openAPIV3Schema of the kubeflow.org/v1 CRD) from a Kubeflow Training
Operator release into scripts/data/, where tests/test_exports_upstream.py validates pytorchjob.yaml against it.

    git clone --branch v1.9.0 https://github.com/kubeflow/training-operator /tmp/to
    python scripts/pytorchjob_schema.py /tmp/to --tag v1.9.0 --out scripts/data/pytorchjob_crd_v1.9.0_schema.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import yaml

CRD = "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a training-operator checkout at the tag")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--commit", help="the tag's commit (default: the checkout's HEAD)")
    args = ap.parse_args()
    commit = args.commit or subprocess.run(["git", "-C", str(args.source), "rev-parse", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()
    crd = yaml.safe_load((args.source / CRD).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    doc = {"source": f"https://github.com/kubeflow/training-operator/blob/{args.tag}/{CRD}",
           "tag": args.tag, "commit": commit, "extracted_by": "scripts/pytorchjob_schema.py",
           "group": crd["spec"]["group"], "version": version["name"], "kind": crd["spec"]["names"]["kind"],
           "openAPIV3Schema": version["schema"]["openAPIV3Schema"]}
    args.out.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"PyTorchJob schema of training-operator {args.tag} -> {args.out}")


if __name__ == "__main__":
    main()
