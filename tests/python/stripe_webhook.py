"""The official `stripe` SDK judging the Stripe webhook deliveries the tests send the operator.

    python stripe_webhook.py verify < deliveries.json

reads a JSON list of {"payload": str, "header": str, "secret": str} and prints a JSON list with,
for each, the event id `stripe.Webhook.construct_event` read (the signature verified with
Stripe's default 300 s tolerance) or the SDK's error message.

    python stripe_webhook.py sign SECRET < payload

prints the Stripe-Signature header the SDK itself makes for the payload, signed now.
"""

import json
import sys

import stripe


def verify(deliveries):
    out = []
    for d in deliveries:
        try:
            event = stripe.Webhook.construct_event(d["payload"], d["header"], d["secret"])
            out.append({"ok": event["id"]})
        except (stripe.SignatureVerificationError, ValueError) as e:
            out.append({"error": str(e)})
    return out


def main():
    command = sys.argv[1]
    if command == "verify":
        print(json.dumps(verify(json.load(sys.stdin))))
    elif command == "sign":
        payload = sys.stdin.read()
        print(stripe.WebhookSignature.generate_signature_header(payload, sys.argv[2]))
    else:
        sys.exit(f"unknown command {command!r}: verify or sign")


if __name__ == "__main__":
    main()
