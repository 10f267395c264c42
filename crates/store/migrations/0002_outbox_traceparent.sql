-- W3C trace context of the request that caused each event, so the relay
-- can carry one trace id from the HTTP request into every consumer.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
