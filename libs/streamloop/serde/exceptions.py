from streamloop.errors import DependencyUnavailable, StreamloopError


class SerdeError(StreamloopError):
    """Encoding or decoding a record failed."""


class SerializationError(SerdeError):
    """A record does not match the schema it is written with."""


class DeserializationError(SerdeError):
    """Bytes could not be decoded into a record."""


class UnknownSchemaError(DeserializationError):
    """The bytes name a schema (fingerprint or registry id) that this reader does not know."""


class WrongSchemaError(DeserializationError):
    """The bytes were written with a schema that cannot be resolved to the topic's schema."""


class UnboundedSchemaError(SerdeError):
    """A schema could make a decoder loop without consuming input (arrays of zero-byte items)."""


class RegistryUnavailableError(DependencyUnavailable):
    """The Schema Registry did not answer (unreachable, timed out, 5xx): the record may be fine."""


class SchemaNotRegisteredError(RegistryUnavailableError):
    """The registry has no id for the schema a service writes with (yet): the deployment registers it."""
