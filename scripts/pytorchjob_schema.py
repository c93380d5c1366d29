"""Extracts the PyTorchJob schema (the openAPIV3Schema of the kubeflow.org/v1 CRD) from a Kubeflow Training
Operator release into scripts/data/, where tests/test_exports_upstream.py validates pytorchjob.yaml against it.

    git clone --branch v1.9.0 https://github.com/kubeflow/training-operator /tmp/to
    python scripts/pytorchjob_schema.py /tmp/to --tag v1.9.0 --out scripts/data/pytorchjob_crd_v1.9.0_schema.json
"""

from __future__ import annotations

import json

import yaml

from upstream_checkout import checkout_args

CRD = "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"


def main() -> None:
    args, commit = checkout_args(__doc__.splitlines()[0], "training-operator")
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
