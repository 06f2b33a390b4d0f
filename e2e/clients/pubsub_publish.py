"""Publish one Pub/Sub message and pull it back, as an agent would: default credentials
(google.auth finds the metadata server), TLS to pubsub.googleapis.com:443, gRPC.

Creates the topic and subscription first, prints one JSON object on stdout and exits 0; on
any failure prints {"error": ...} and exits 1. Run it with the venv that e2e/clients/venv.sh
makes; trust a test CA with GRPC_DEFAULT_SSL_ROOTS_FILE_PATH.
"""

import argparse
import json
import os
import sys
import time

# grpc's c-ares resolver may ignore the namespace's /etc/hosts; the libc one honours it.
os.environ.setdefault("GRPC_DNS_RESOLVER", "native")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default="cassette-e2e-topic")
    parser.add_argument("--subscription", default="cassette-e2e-sub")
    parser.add_argument("--message", default="hello from the agent")
    parser.add_argument("--project", help="default: the one the credentials name")
    parser.add_argument("--endpoint", default="pubsub.googleapis.com:443")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    parser.add_argument(
        "--then-delete",
        action="store_true",
        help="delete the topic afterwards; its refusal is reported as delete_error",
    )
    args = parser.parse_args()

    result = {"endpoint": args.endpoint}
    try:
        import google.auth
        from google.api_core.client_options import ClientOptions
        from google.cloud import pubsub_v1

        credentials, project = google.auth.default()
        project = args.project or project
        if not project:
            raise RuntimeError("no project: pass --project or run where the metadata server names one")
        result["project"] = project
        result["credentials"] = type(credentials).__module__ + "." + type(credentials).__name__
        options = ClientOptions(api_endpoint=args.endpoint)
        publisher = pubsub_v1.PublisherClient(credentials=credentials, client_options=options)
        subscriber = pubsub_v1.SubscriberClient(credentials=credentials, client_options=options)

        topic = publisher.topic_path(project, args.topic)
        subscription = subscriber.subscription_path(project, args.subscription)
        publisher.create_topic(name=topic, timeout=args.timeout)
        subscriber.create_subscription(name=subscription, topic=topic, timeout=args.timeout)
        result["topic"] = topic
        result["subscription"] = subscription

        future = publisher.publish(topic, args.message.encode("utf-8"))
        result["message_id"] = future.result(timeout=args.timeout)

        deadline = time.monotonic() + args.timeout
        received = []
        while not received and time.monotonic() < deadline:
            response = subscriber.pull(
                subscription=subscription, max_messages=1, timeout=args.timeout
            )
            received = list(response.received_messages)
        if not received:
            raise RuntimeError(f"no message arrived on {subscription} within {args.timeout}s")
        message = received[0]
        subscriber.acknowledge(
            subscription=subscription, ack_ids=[message.ack_id], timeout=args.timeout
        )
        result["received"] = message.message.data.decode("utf-8")
        result["received_id"] = message.message.message_id
        if args.then_delete:
            # What the client library itself says when the call is refused.
            try:
                publisher.delete_topic(topic=topic, timeout=args.timeout)
                result["deleted"] = True
            except Exception as error:
                result["delete_error"] = f"{type(error).__name__}: {error}"
        publisher.transport.close()
        subscriber.close()
    except Exception as error:  # report every failure the same way, as JSON
        result["error"] = f"{type(error).__name__}: {error}"
        print(json.dumps(result))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
