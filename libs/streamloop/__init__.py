"""streamloop: closed-loop machine learning on event streams.

Shared mechanics used by every service; one concern per subpackage:

- ``contracts``: the topic catalog, the Avro schemas and the pipeline spec
- ``serde``: Avro single-object and Confluent wire formats
- ``kafka``: the consume -> process -> produce runner, dead letters, admin and lag
- ``store``: the online feature store (Redis)
- ``telemetry``: traces through Kafka headers, Prometheus metrics
- ``stack``: the embedded local broker, Redis and service launcher
- ``cli``: the ``streamloop`` command
"""

__version__ = "0.2.0"
