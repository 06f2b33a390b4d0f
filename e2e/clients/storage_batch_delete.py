"""Delete objects in one batch with Google's Cloud Storage client, as an agent would: default
credentials (google.auth finds the metadata server), https://storage.googleapis.com, and
`with client.batch(): bucket.delete_blob(...)` for each object — one POST /batch/storage/v1.

Prints one JSON object on stdout: {"deleted": [...]} and exit 0 if the batch went through, or
{"error": ..., "status": ..., "message": ...} and exit 1 with what the client raised. Run it
with the venv that e2e/clients/venv.sh makes; trust a test CA with REQUESTS_CA_BUNDLE. It
never sets STORAGE_EMULATOR_HOST: the point is the real endpoint.
"""

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True)
    parser.add_argument("objects", nargs="+")
    parser.add_argument("--project", help="default: the one the credentials name")
    args = parser.parse_args()

    result = {"bucket": args.bucket, "objects": args.objects}
    if "STORAGE_EMULATOR_HOST" in os.environ:
        result["error"] = "STORAGE_EMULATOR_HOST is set; this client must use the real endpoint"
        print(json.dumps(result))
        return 2
    try:
        import google.auth
        from google.cloud import storage

        credentials, project = google.auth.default()
        project = args.project or project
        client = storage.Client(project=project, credentials=credentials)
        bucket = client.bucket(args.bucket)
        with client.batch():
            for name in args.objects:
                bucket.delete_blob(name)
        result["deleted"] = args.objects
    except Exception as error:  # report what the client library itself raised
        result["error"] = f"{type(error).__name__}: {error}"
        result["status"] = getattr(error, "code", None)
        result["message"] = getattr(error, "message", None)
        print(json.dumps(result))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
