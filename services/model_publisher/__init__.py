"""The model publisher: the registry's single writer; registers, judges, promotes and rolls back models."""
