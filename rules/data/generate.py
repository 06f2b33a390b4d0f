#!/usr/bin/env python3
"""Regenerates google-rest-methods.tsv, the REST method -> IAM permission table that
cassette-rules classifies Google API requests with (rules/src/classify/generated.rs).

Source: the discovery documents Google publishes for its APIs, as shipped inside the PyPI
package google-api-python-client (googleapiclient/discovery_cache/documents/*.json),
Apache License 2.0 (see SOURCES.md). For each REST method the table keeps its id, HTTP
method and path template, and the IAM permission it needs, taken in this order:

  override     permission-overrides.tsv beside this script (a method whose permission
               follows neither rule below; each line says why);
  description  the first permission named in the method's description that belongs to the
               service (BigQuery and Resource Manager document theirs this way);
  convention   Google's naming convention: <iam prefix>.<resource>.<verb>, the resource
               being the method's innermost collection and the verb the method's name,
               with insert as create, patch as update and aggregatedList as list.

testIamPermissions needs no permission and gets none.

Usage:  python3 rules/data/generate.py [WHEEL]
WHEEL defaults to google_api_python_client-$VERSION-py3-none-any.whl, downloaded with
`pip download` when absent. Standard library only. The output is sorted and stable.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

VERSION = "2.202.0"
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "google-rest-methods.tsv")
OVERRIDES = os.path.join(HERE, "permission-overrides.tsv")

# (API name, discovery version): the services coding agents use.
APIS = [
    ("artifactregistry", "v1"),
    ("bigquery", "v2"),
    ("cloudbuild", "v1"),
    ("cloudbuild", "v2"),
    ("cloudkms", "v1"),
    ("cloudresourcemanager", "v3"),
    ("cloudresourcemanager", "v1"),
    ("compute", "v1"),
    ("container", "v1"),
    ("iam", "v1"),
    ("iam", "v2"),
    ("iamcredentials", "v1"),
    ("logging", "v2"),
    ("pubsub", "v1"),
    ("run", "v2"),
    ("run", "v1"),
    ("secretmanager", "v1"),
    ("securesourcemanager", "v1"),
    ("sqladmin", "v1"),
    ("sqladmin", "v1beta4"),
]

# The IAM prefix of an API whose permissions are not spelt with its API name.
PREFIX = {
    "cloudresourcemanager": "resourcemanager",
    "iamcredentials": "iam",
    "sqladmin": "cloudsql",
}

VERBS = {"insert": "create", "patch": "update", "aggregatedList": "list"}

PERMISSION = re.compile(r"`([a-z][a-zA-Z0-9]*\.[a-zA-Z0-9]+\.[a-zA-Z0-9]+)`")


def wheel_path(argv):
    if len(argv) > 1:
        return argv[1]
    name = f"google_api_python_client-{VERSION}-py3-none-any.whl"
    cache = os.path.join(tempfile.gettempdir(), "cassette-discovery")
    path = os.path.join(cache, name)
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", cache,
             f"google-api-python-client=={VERSION}"],
            check=True,
        )
    return path


def methods(resource, out):
    for method in resource.get("methods", {}).values():
        out.append(method)
    for child in resource.get("resources", {}).values():
        methods(child, out)


def load_overrides():
    overrides = {}
    with open(OVERRIDES, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            method_id, permission, _why = line.split("\t", 2)
            overrides[method_id] = None if permission == "-" else permission
    return overrides


def permission(api, method, overrides):
    method_id = method["id"]
    if method_id in overrides:
        return overrides[method_id], "override"
    parts = method_id.split(".")
    verb = parts[-1]
    if verb == "testIamPermissions":
        return None, "convention"
    prefix = PREFIX.get(api, api)
    for named in PERMISSION.findall(method.get("description", "")):
        if named.split(".")[0] == prefix:
            return named, "description"
    # The innermost collection: the part before the verb.
    collection = parts[-2] if len(parts) > 2 else parts[0]
    return f"{prefix}.{collection}.{VERBS.get(verb, verb)}", "convention"


def main(argv):
    overrides = load_overrides()
    rows = set()
    with zipfile.ZipFile(wheel_path(argv)) as wheel:
        for api, version in APIS:
            doc = json.loads(wheel.read(
                f"googleapiclient/discovery_cache/documents/{api}.{version}.json"))
            service_path = doc.get("servicePath", "")
            found = []
            methods(doc, found)
            for method in found:
                template = "/" + service_path + method.get("flatPath", method["path"])
                template = template.replace("//", "/")
                perm, source = permission(api, method, overrides)
                rows.add((api, version, method["id"], method["httpMethod"], template,
                          perm or "-", source))
    unused = set(overrides) - {r[2] for r in rows}
    if unused:
        sys.exit(f"permission-overrides.tsv names methods no document has: {sorted(unused)}")
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(
            "# Generated by rules/data/generate.py from the discovery documents in "
            f"google-api-python-client {VERSION} (Apache-2.0); do not edit by hand.\n"
            "# api\tversion\tmethod id\tHTTP method\tpath template\tpermission\tsource\n")
        for row in sorted(rows):
            f.write("\t".join(row) + "\n")
    print(f"{OUT}: {len(rows)} methods", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
