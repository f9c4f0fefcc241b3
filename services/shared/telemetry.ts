import {
  type Attributes,
  defaultTextMapGetter,
  defaultTextMapSetter,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BasicTracerProvider, BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import type { TelemetryOptions } from "./config.js";

export type { Span };
export { SpanKind };

/** traceHeader is the W3C Trace Context header a trace travels in, between services and to upstreams. */
export const traceHeader = "traceparent";

/** traceIdHeader is the response header that names the trace of a request, for its caller to look it up. */
export const traceIdHeader = "x-trace-id";

/** SpanOptions place a span: its parent is a span, a `traceparent` header value, or none (a new trace). */
export interface SpanOptions {
  parent?: Span | string | null;
  kind?: SpanKind;
  attributes?: Attributes;
}

/** Telemetry starts spans and exports them over OTLP/HTTP; a disabled one starts none. */
export interface Telemetry {
  readonly enabled: boolean;
  /** startSpan starts a span, or returns undefined when tracing is off. */
  startSpan(name: string, options?: SpanOptions): Span | undefined;
  /** traceparent is the header value that makes the next hop a child of `span`. */
  traceparent(span: Span): string;
  /** end ends a span, marking it failed with the error's text when there is one. */
  end(span: Span | undefined, error?: unknown): void;
  /** close sends what is pending and stops. */
  close(): Promise<void>;
}

const off: Telemetry = {
  enabled: false,
  startSpan: () => undefined,
  traceparent: () => "",
  end: () => {},
  close: async () => {},
};

/**
 * createTelemetry makes the tracer of one process: the official SDK's tracer provider with a
 * batching OTLP/HTTP exporter. Spans are started with explicit parents (no ambient context), so a
 * span always says which run or call it belongs to whatever the event loop interleaves.
 */
export function createTelemetry(options: TelemetryOptions): Telemetry {
  const url = options.tracesEndpoint ?? (options.endpoint ? `${options.endpoint.replace(/\/+$/, "")}/v1/traces` : undefined);
  if (!url) return off;
  const exporter = new OTLPTraceExporter({ url });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ "service.name": options.serviceName ?? "shaker" }),
    spanProcessors: [new BatchSpanProcessor(exporter, { scheduledDelayMillis: options.exportDelayMs ?? 5000 })],
  });
  const tracer = provider.getTracer("shaker");
  const propagator = new W3CTraceContextPropagator();
  const contextOf = (parent: SpanOptions["parent"]) => {
    if (!parent) return ROOT_CONTEXT;
    if (typeof parent === "string") return propagator.extract(ROOT_CONTEXT, { [traceHeader]: parent }, defaultTextMapGetter);
    return trace.setSpan(ROOT_CONTEXT, parent);
  };
  return {
    enabled: true,
    startSpan(name, o = {}) {
      return tracer.startSpan(name, { kind: o.kind ?? SpanKind.INTERNAL, attributes: o.attributes }, contextOf(o.parent));
    },
    traceparent(span) {
      const carrier: Record<string, string> = {};
      propagator.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, defaultTextMapSetter);
      return carrier[traceHeader] ?? "";
    },
    end(span, error) {
      if (!span) return;
      if (error !== undefined) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
      }
      span.end();
    },
    close: () => provider.shutdown(),
  };
}
