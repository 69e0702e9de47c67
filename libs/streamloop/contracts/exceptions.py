from streamloop.errors import StreamloopError


class ContractError(StreamloopError):
    """A contract (catalog, schema or pipeline spec) is missing or invalid."""


class CatalogError(ContractError):
    """The topic catalog is invalid or names an unknown topic."""


class SchemaNotFoundError(ContractError):
    """No schema is known under that name or fingerprint."""


class SchemaHistoryError(ContractError):
    """A kept earlier version of a schema (``history/``) cannot be read with the current one."""


class PipelineSpecError(ContractError):
    """The pipeline spec is invalid; the message names each bad field."""
