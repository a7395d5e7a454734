"""An OTLP/HTTP logs receiver for the tests: POST /v1/logs with the JSON
encoding, parsed strictly into the OpenTelemetry protobuf messages
(opentelemetry-proto; an unknown or mistyped field is refused with 400),
each log record appended to OUT as one JSON line (its time, severity, body
and attributes). Prints its port, then serves until killed.

usage: otlp_receiver.py OUT
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

OUT = sys.argv[1]


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/logs" or self.headers.get("Content-Type") != "application/json":
            self.send_error(404)
            return
        req = ExportLogsServiceRequest()
        try:
            json_format.Parse(body, req, ignore_unknown_fields=False)
        except json_format.ParseError as e:
            print("refused:", e, file=sys.stderr, flush=True)
            self.send_error(400)
            return
        with open(OUT, "a") as out:
            for rl in req.resource_logs:
                resource = {a.key: value(a.value) for a in rl.resource.attributes}
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        out.write(json.dumps({
                            "resource": resource,
                            "scope": sl.scope.name,
                            "time_unix_nano": r.time_unix_nano,
                            "severity_number": r.severity_number,
                            "severity_text": r.severity_text,
                            "body": r.body.string_value,
                            "attributes": {a.key: value(a.value) for a in r.attributes},
                        }) + "\n")
        reply = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
