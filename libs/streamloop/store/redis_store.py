"""The Redis backend of the feature store; the key layout is a contract: docs/feature-store-format.md.

One hash per (pipeline, group, entity) holding ``t`` (event time ms), ``s`` (sequence), ``w`` (write
time ms) and ``v`` (the FeatureRow, Avro single-object encoded). One Lua script compares and sets,
so no reader-then-writer race can let an older event overwrite a newer one. Only Redis 6.2
commands are used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis
from redis import exceptions as rex
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from streamloop.contracts.schemas import SchemaRepository
from streamloop.serde import SerdeError, SingleObjectSerde
from streamloop.store.exceptions import (
    FeatureStoreAccessDenied,
    FeatureStoreError,
    FeatureStoreUnavailable,
    InvalidEntityKey,
    InvalidFeatureStoreConfig,
    InvalidFeatureWrite,
    UnreadableFeatureRow,
)
from streamloop.store.feature_store import (
    FeatureRead,
    FeatureStore,
    FeatureWrite,
    is_expired,
    wall_clock_ms,
)

FEATURE_ROW_SCHEMA = "store/feature_row.avsc"

# The script clamps PEXPIRE to this (~4,400 years) so a far-future event time cannot overflow it.
MAX_TTL_MS = 2**47

# Prefix, pipeline and group are joined with ':'; keeping ':' and glob characters out of them makes
# every key parse back unambiguously and lets tools SCAN one pipeline or group by pattern.
# Key prefixes, pipelines and feature groups: one part of a key, so no ':' (settings check it at start).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_NAME = re.compile(NAME_PATTERN)

# KEYS[1]: the entity hash. ARGV: t, s, w, v, now_ms, ttl_ms (integers in canonical decimal).
# Versions are compared as decimal strings (length first, then an 11-digit head and a 9-digit tail
# as numbers) because Lua numbers are doubles and int64 offsets above 2^53 would compare wrongly.
WRITE_SCRIPT = """
local function less(a, b)
  if #a ~= #b then return #a < #b end
  local ah, bh = tonumber(string.sub(a, 1, -10)) or 0, tonumber(string.sub(b, 1, -10)) or 0
  if ah ~= bh then return ah < bh end
  return tonumber(string.sub(a, -9)) < tonumber(string.sub(b, -9))
end

local t, s = ARGV[1], ARGV[2]
local stored = redis.call('HMGET', KEYS[1], 't', 's')
if stored[1] then
  local st, ss = stored[1], stored[2] or ''
  if not (less(st, t) or (st == t and less(ss, s))) then
    return 0
  end
end
redis.call('HSET', KEYS[1], 't', t, 's', s, 'w', ARGV[3], 'v', ARGV[4])
local remaining = tonumber(ARGV[6]) - (tonumber(ARGV[5]) - tonumber(t))
if remaining < 1 then
  remaining = 1
elseif remaining > 140737488355328 then
  remaining = 140737488355328
end
redis.call('PEXPIRE', KEYS[1], string.format('%d', remaining))
return 1
"""


def create_redis_client(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    ssl_ca_certs: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_check_hostname: bool = True,
    socket_timeout_s: float = 5.0,
    retries: int = 3,
) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` (TLS) or ``unix://`` URLs.

    Credentials may be in the URL (``rediss://user:password@host:6380/0``) or given here, which
    keeps secrets out of logged URLs. With ``rediss://`` the server certificate is always verified
    (against ``ssl_ca_certs``, else the system CAs); ``ssl_certfile``/``ssl_keyfile`` add a client
    certificate (mutual TLS). A command whose connection failed or timed out is sent again, up to
    ``retries`` times, even when Redis ran it and only the reply was lost: every write made through
    the client must bear running twice. The feature store's write script ignores versions it already
    holds; the collector's join state script takes the offset it writes, found under its own owner,
    as its own write (services/ground_truth_collector/redis_state.py); a SET writes the same value
    again; an owner counter's HINCRBY counts twice, and the store owns the number it got back.
    """
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise InvalidFeatureStoreConfig(f"not a Redis URL (redis://, rediss:// or unix://): {scheme}://...")
    tls_files = {"ssl_ca_certs": ssl_ca_certs, "ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile}
    for name, value in tls_files.items():
        if value is not None and scheme != "rediss":
            raise InvalidFeatureStoreConfig(f"{name} needs a rediss:// URL")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise InvalidFeatureStoreConfig("ssl_certfile and ssl_keyfile are given together")
    options: dict[str, Any] = {}
    if username is not None:
        options["username"] = username
    if password is not None:
        options["password"] = password
    if scheme == "rediss":
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = ssl_check_hostname
    options.update({k: v for k, v in tls_files.items() if v is not None})
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=1.0), retries),
        **options,
    )


class RedisFeatureStore(FeatureStore):
    """Feature rows of one pipeline in Redis hashes; TTL counts from each row's event time.

    Given a URL, the store owns its client and ``close()`` closes it; a client passed in stays the
    caller's unless ``owns_client=True`` hands it over. The client must not decode responses (``v`` is
    binary).
    """

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        pipeline: str,
        ttl_ms: int,
        key_prefix: str = "streamloop",
        *,
        repository: SchemaRepository | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        owns_client: bool = False,
    ) -> None:
        _check_name("key_prefix", key_prefix)
        _check_name("pipeline", pipeline)
        if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or not 1 <= ttl_ms <= MAX_TTL_MS:
            raise InvalidFeatureStoreConfig(f"ttl_ms must be an int in [1, 2**47], got {ttl_ms!r}")
        if isinstance(client_or_url, str):
            self._client = create_redis_client(client_or_url)
            self._owns_client = True
        else:
            if client_or_url.get_connection_kwargs().get("decode_responses"):
                raise InvalidFeatureStoreConfig("the Redis client must use decode_responses=False")
            self._client = client_or_url
            self._owns_client = owns_client
        self.pipeline = pipeline
        self.ttl_ms = ttl_ms
        self.key_prefix = key_prefix
        self._clock = clock
        repository = repository or SchemaRepository()
        self._serde = SingleObjectSerde(repository.load(FEATURE_ROW_SCHEMA), repository)
        # Only hashes the script locally; it is loaded into the server on the first NOSCRIPT.
        self._script = self._client.register_script(WRITE_SCRIPT)

    def key(self, group: str, entity_key: str) -> str:
        """``{prefix}:{pipeline}:{group}:{entity_key}``; the entity key may itself contain ':'."""
        _check_name("group", group)
        if not isinstance(entity_key, str) or not entity_key:
            raise InvalidEntityKey(f"entity_key must be a non-empty string, got {entity_key!r}")
        return f"{self.key_prefix}:{self.pipeline}:{group}:{entity_key}"

    def write_many(
        self, group: str, writes: Sequence[FeatureWrite], now_ms: int | None = None
    ) -> list[bool]:
        """Guarded writes in one pipelined round trip; True where this call applied the write.

        Everything is encoded before any I/O, so an invalid record fails the batch untouched. If
        the connection drops mid-batch the client resends it: writes the lost attempt applied then
        report False, and the stored state is the same as after one clean attempt.
        """
        _check_name("group", group)
        now = self._now(now_ms)
        calls = [
            (self.key(group, write.entity_key), write.event_time_ms, write.sequence, now,
             self._encode(write), now, self.ttl_ms)
            for write in writes
        ]
        action = f"write {len(calls)} rows to {self.pipeline}/{group}"
        applied = [False] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            if not pending:
                break
            if attempt:
                self._load_script(action)
            commands = [("EVALSHA", self._script.sha, 1, *calls[i]) for i in pending]
            replies = self._execute(action, commands, tolerate=rex.NoScriptError)
            for i, reply in zip(pending, replies, strict=True):
                applied[i] = reply == 1
            # NOSCRIPT (server restarted, SCRIPT FLUSH) means that write did not run: rerun just those.
            pending = [i for i, reply in zip(pending, replies, strict=True) if isinstance(reply, Exception)]
        if pending:
            raise FeatureStoreError(f"{action}: the server keeps forgetting the write script")
        return applied

    def read_many(
        self, group: str, entity_keys: Sequence[str], now_ms: int | None = None
    ) -> list[FeatureRead | None]:
        """One pipelined round trip of ``HMGET t w v`` per entity; TTL enforced on the stored event time."""
        keys = self._keys(group, entity_keys)
        now = self._now(now_ms)
        replies = self._execute(f"read {len(keys)} rows from {self.pipeline}/{group}",
                                [("HMGET", key, "t", "w", "v") for key in keys])
        return [self._decode(entity, key, reply, now)
                for entity, key, reply in zip(entity_keys, keys, replies, strict=True)]

    def delete_entities(self, group: str, entity_keys: Sequence[str]) -> int:
        """Number of entities that existed and were deleted."""
        keys = self._keys(group, entity_keys)
        if not keys:
            return 0
        with _translated(f"delete {len(keys)} rows from {self.pipeline}/{group}"):
            return int(self._client.delete(*keys))

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _now(self, now_ms: int | None) -> int:
        now = self._clock() if now_ms is None else now_ms
        if isinstance(now, bool) or not isinstance(now, int):
            raise InvalidFeatureStoreConfig(f"now_ms must be an int, got {now!r}")
        return now

    def _keys(self, group: str, entity_keys: Sequence[str]) -> list[str]:
        _check_name("group", group)
        # A bare string is a Sequence[str] too; iterating its characters is never what was meant.
        if isinstance(entity_keys, str | bytes):
            raise TypeError("entity_keys must be a sequence of keys, not a single string")
        return [self.key(group, entity) for entity in entity_keys]

    def _encode(self, write: FeatureWrite) -> bytes:
        try:
            return self._serde.encode({"numeric": write.numeric, "categorical": write.categorical})
        except SerdeError as exc:
            raise InvalidFeatureWrite(f"features of {write.entity_key!r}: {exc}") from exc

    def _decode(self, entity: str, key: str, reply: list[bytes | None], now_ms: int) -> FeatureRead | None:
        event_time, written_at, value = reply
        if event_time is None:
            return None
        try:
            event_time_ms, written_at_ms = int(event_time), int(written_at)
        except (TypeError, ValueError) as exc:
            problem = f"t and w must be integers, got {event_time!r}, {written_at!r}"
            raise UnreadableFeatureRow(f"{key}: {problem}") from exc
        # Checked before decoding: an expired row is gone by contract, even if it cannot be decoded.
        if is_expired(event_time_ms, self.ttl_ms, now_ms):
            return None
        try:
            record = self._serde.decode(value)
        except SerdeError as exc:
            raise UnreadableFeatureRow(f"{key}: {exc}") from exc
        return FeatureRead(entity, record["numeric"], record["categorical"], event_time_ms, written_at_ms)

    def _execute(self, action: str, commands: list[tuple[Any, ...]],
                 tolerate: type[Exception] | None = None) -> list[Any]:
        """Send the commands in one round trip (no MULTI: each write script is atomic on its own)."""
        if not commands:
            return []
        with _translated(action), self._client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies = pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception) and not (tolerate and isinstance(reply, tolerate)):
                    raise reply
            return replies

    def _load_script(self, action: str) -> None:
        with _translated(action):
            self._script.sha = self._client.script_load(WRITE_SCRIPT)


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidFeatureStoreConfig(
            f"{kind} must be letters, digits, '_', '.' or '-' (no ':'), starting with a letter or digit; "
            f"got {value!r}"
        )


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError) as exc:
        raise FeatureStoreAccessDenied(f"cannot {action}: {exc}") from exc
    # A read-only replica answers writes during a failover: retrying later reaches the new primary.
    except (rex.ConnectionError, rex.TimeoutError, rex.ReadOnlyError) as exc:
        raise FeatureStoreUnavailable(f"cannot {action}: {exc}") from exc
    except rex.RedisError as exc:
        raise FeatureStoreError(f"cannot {action}: {exc}") from exc
