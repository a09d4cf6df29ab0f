"""Both ends of gRPC calls through Tollgate, with grpcio (the official gRPC library for Python).

    grpc_peer.py serve PORT [CERT KEY]  a test service on 127.0.0.1:PORT (TLS with CERT and KEY,
                                        PEM files, when given); prints "listening"; runs until
                                        killed
    grpc_peer.py call < scenario        a client; prints one JSON document

The service, tollgate.test.Echo, takes and returns google.protobuf.StringValue messages (no
generated code: the well-known type's own class serializes them):

    Unary         answers a JSON text: the value, the tenant header and whether any API key
                  reached it, and the deadline left when it started (None without one); sends
                  initial metadata x-initial and trailing metadata x-trailer
    ServerStream  answers int(value) messages "0", "1", ... then trailing metadata
    Bidi          answers each message with "echo:" + it, until the client ends its side
    Slow          waits float(value) seconds, then answers "done"
    Fail          ends with NOT_FOUND and its own google.rpc.Status details (ErrorInfo NOT_HERE)

Scenario: {"target": "127.0.0.1:PORT", "calls": [{"method", "service" (default
tollgate.test.Echo), "key", "value" (a list for Bidi), "timeout"}]}. For each call the client reports the code's name, the messages, the initial and
trailing metadata, and, when the call failed, the google.rpc.Status decoded from
grpc-status-details-bin with its details unpacked.
"""

import json
import select
import sys
from concurrent import futures

import grpc
from google.protobuf import wrappers_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

SERVICE = "tollgate.test.Echo"
KEY_HEADERS = ("authorization", "x-api-key")


def string_value(text):
    return wrappers_pb2.StringValue(value=text)


def unary(request, context):
    metadata = dict(context.invocation_metadata())
    context.send_initial_metadata((("x-initial", "yes"),))
    context.set_trailing_metadata((("x-trailer", "kept"),))
    return string_value(
        json.dumps(
            {
                "value": request.value,
                "tenant": metadata.get("x-tollgate-tenant"),
                "key_seen": any(h in metadata for h in KEY_HEADERS),
                "deadline_left": context.time_remaining(),
            }
        )
    )


def server_stream(request, context):
    for i in range(int(request.value)):
        yield string_value(str(i))
    context.set_trailing_metadata((("x-trailer", "streamed"),))


def bidi(requests, context):
    for request in requests:
        yield string_value("echo:" + request.value)


def slow(request, context):
    # select() waits a relative time: time.sleep() fails with EINVAL under libfaketime (the
    # suite's moved dates), which rewrites its absolute monotonic deadline.
    select.select([], [], [], float(request.value))
    return string_value("done")


def fail(request, context):
    info = error_details_pb2.ErrorInfo(reason="NOT_HERE", domain="test.example")
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="no such thing")
    status.details.add().Pack(info)
    context.abort_with_status(rpc_status.to_status(status))


def handlers():
    kinds = {
        "Unary": (grpc.unary_unary_rpc_method_handler, unary),
        "ServerStream": (grpc.unary_stream_rpc_method_handler, server_stream),
        "Bidi": (grpc.stream_stream_rpc_method_handler, bidi),
        "Slow": (grpc.unary_unary_rpc_method_handler, slow),
        "Fail": (grpc.unary_unary_rpc_method_handler, fail),
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: make(
                handler,
                request_deserializer=wrappers_pb2.StringValue.FromString,
                response_serializer=wrappers_pb2.StringValue.SerializeToString,
            )
            for name, (make, handler) in kinds.items()
        },
    )


def serve(port, cert=None, key=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handlers(),))
    address = "127.0.0.1:%d" % port
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            creds = grpc.ssl_server_credentials(((k.read(), c.read()),))
        server.add_secure_port(address, creds)
    else:
        server.add_insecure_port(address)
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


DETAIL_TYPES = {
    "google.rpc.ErrorInfo": error_details_pb2.ErrorInfo,
    "google.rpc.QuotaFailure": error_details_pb2.QuotaFailure,
    "google.rpc.RetryInfo": error_details_pb2.RetryInfo,
    "google.rpc.Help": error_details_pb2.Help,
}


def decoded_details(call):
    """The google.rpc.Status of a failed call (None without one), details unpacked."""
    status = rpc_status.from_call(call)
    if status is None:
        return None
    out = {"code": status.code, "message": status.message, "details": []}
    for any_ in status.details:
        name = any_.TypeName()
        detail = {"type": name}
        cls = DETAIL_TYPES.get(name)
        if cls is not None:
            message = cls()
            any_.Unpack(message)
            if name == "google.rpc.ErrorInfo":
                detail.update(reason=message.reason, domain=message.domain,
                              metadata=dict(message.metadata))
            elif name == "google.rpc.QuotaFailure":
                detail["violations"] = [
                    {"subject": v.subject, "description": v.description,
                     "quota_id": v.quota_id, "quota_metric": v.quota_metric,
                     "quota_value": v.quota_value}
                    for v in message.violations
                ]
            elif name == "google.rpc.RetryInfo":
                detail["retry_delay_seconds"] = message.retry_delay.seconds
            elif name == "google.rpc.Help":
                detail["links"] = [{"description": l.description, "url": l.url}
                                   for l in message.links]
        out["details"].append(detail)
    return out


def one_call(channel, c):
    method = "/%s/%s" % (c.get("service", SERVICE), c["method"])
    metadata = []
    if c.get("key"):
        metadata.append(("authorization", "Bearer " + c["key"]))
    timeout = c.get("timeout", 20)
    ser = wrappers_pb2.StringValue.SerializeToString
    de = wrappers_pb2.StringValue.FromString
    out = {"messages": []}
    call = None
    try:
        if c["method"] == "ServerStream":
            call = channel.unary_stream(method, ser, de)(
                string_value(c["value"]), metadata=metadata, timeout=timeout)
            for message in call:
                out["messages"].append(message.value)
        elif c["method"] == "Bidi":
            requests = iter([string_value(v) for v in c["value"]])
            call = channel.stream_stream(method, ser, de)(
                requests, metadata=metadata, timeout=timeout)
            for message in call:
                out["messages"].append(message.value)
        else:
            reply, call = channel.unary_unary(method, ser, de).with_call(
                string_value(c.get("value", "")), metadata=metadata, timeout=timeout)
            out["messages"].append(reply.value)
        out["code"] = call.code().name
    except grpc.RpcError as e:
        call = e
        out["code"] = e.code().name
        out["message"] = e.details()
        out["status"] = decoded_details(e)
    out["initial"] = dict(call.initial_metadata() or ())
    out["trailing"] = {k: v for k, v in (call.trailing_metadata() or ())
                       if not k.endswith("-bin")}
    return out


def run_calls(s):
    options = (("grpc.enable_http_proxy", 0),)
    with grpc.insecure_channel(s["target"], options=options) as channel:
        return {"calls": [one_call(channel, c) for c in s["calls"]]}


def main():
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), *sys.argv[3:5])
    elif sys.argv[1] == "call":
        print(json.dumps(run_calls(json.load(sys.stdin))))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
