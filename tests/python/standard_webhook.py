"""The Standard Webhooks reference library judging the spend-alert webhooks the operator sends.

    python standard_webhook.py verify < deliveries.json

reads a JSON list of {"secret": str, "headers": {name: value}, "body": str} and prints a JSON list
with, for each, the payload `Webhook.verify` returned (the signature and timestamp checked) or the
library's error message.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook


def verify(deliveries):
    out = []
    for d in deliveries:
        try:
            out.append({"ok": Webhook(d["secret"]).verify(d["body"], d["headers"])})
        except Exception as e:  # the library raises its own WebhookVerificationError
            out.append({"error": f"{type(e).__name__}: {e}"})
    return out


def main():
    if sys.argv[1:] != ["verify"]:
        sys.exit("usage: standard_webhook.py verify < deliveries.json")
    print(json.dumps(verify(json.load(sys.stdin))))


if __name__ == "__main__":
    main()
