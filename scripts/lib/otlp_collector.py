"""A minimal OTLP/gRPC trace collector built on OpenTelemetry's own generated classes
(PyPI's opentelemetry-proto), for scripts/bench-tracing.sh and for checking by hand that
ostrakon's spans decode as OTLP:

    python3 scripts/lib/otlp_collector.py PORT COUNT_FILE [--print]

Counts the spans it receives into COUNT_FILE; with --print, prints each span as decoded.
"""
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc


class Collector(pb_grpc.TraceServiceServicer):
    def __init__(self, count_file, show):
        self.count = 0
        self.count_file = count_file
        self.show = show

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.count += 1
                    if self.show:
                        attributes = {
                            a.key: getattr(a.value, a.value.WhichOneof("value"))
                            for a in span.attributes
                        }
                        took_ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
                        print(resource.get("service.instance.id"), span.trace_id.hex(),
                              span.span_id.hex(), span.parent_span_id.hex() or "-",
                              span.name, f"{took_ms:.3f} ms", attributes, flush=True)
        with open(self.count_file, "w") as out:
            out.write(f"{self.count}\n")
        return pb.ExportTraceServiceResponse()


def main():
    port, count_file = int(sys.argv[1]), sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_TraceServiceServicer_to_server(Collector(count_file, "--print" in sys.argv), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
