"""Each service SIGKILLed mid-stream and restarted by the supervisor; Redis restarted; a service SIGSTOPped.

One loop (six services) for the module; each test streams its own events (ids no other test
uses) and checks, by event id, that nothing was lost, how many duplicates there were, that Redis
equals a clean replay and that the scorer serves the registry's champion (tests/faults/verification.py).
Counts and timings print as one ``fault_scenario`` JSON line per test (docs/reliability.md).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import zlib
from collections.abc import Iterator

import pytest

from streamloop.ml.registry import millis
from tests.faults.harness import SESSION_TIMEOUT_MS, FaultLoop, events, wait_processing, wait_until, when
from tests.faults.verification import ScenarioResult, assert_sound, verify

pytestmark = [pytest.mark.faults, pytest.mark.slow]

EVENTS = 600
RATE = 100.0          # events per second: a 6-second stream per test
KILL_AT = EVENTS // 3
# What each service's stage runner consumes (its app.py), by catalog role.
INPUTS = {
    "featurizer": ["input"],
    "online-scorer": ["features"],
    "ground-truth-collector": ["labels", "features", "predictions", "shadow_predictions"],
    "drift-detector": ["features", "predictions", "labeled_examples"],
    "retrainer": ["labeled_examples", "drift_events"],
    "model-publisher": ["model_candidates", "labeled_examples", "metrics"],
}


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, bootstrap_servers: str, redis_url: str,
         embedded_redis) -> Iterator[FaultLoop]:
    data_dir = tmp_path_factory.mktemp("faults")
    running = FaultLoop(data_dir, bootstrap_servers, redis_url, name=f"f-svc-{os.getpid()}-{int(time.time())}")
    running.embedded_redis = embedded_redis  # type: ignore[attr-defined]
    try:
        running.start()
        yield running
    finally:
        running.stop()


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) % 1_000_000


WARM_START = re.compile(r"warm start for \S+ (\S+): replayed (\d+) records")


def log_size(loop: FaultLoop, service: str) -> int:
    path = loop.service(service).log_path
    return path.stat().st_size if path.exists() else 0


def restarted_log(loop: FaultLoop, service: str, since: int, killed_pid: int) -> list[str]:
    """The lines the restarted instances of ``service`` logged: the log file (shared by its restarts) from
    byte ``since``, taken at the kill, without the killed process's. Found by position, not by the
    'service[pid]' prefix: a changed log format (d7e1b66's 'service/instance[pid]') hid every line."""
    with loop.service(service).log_path.open("rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return [line for line in text.splitlines() if f"[{killed_pid}]" not in line]


def log_tail(lines: list[str], chars: int = 3000) -> str:
    return "\n".join(lines)[-chars:]


def warm_start(loop: FaultLoop, since: int, killed_pid: int, timeout_s: float = 60.0) -> dict:
    """How many records the restarted drift detector replayed to refill its windows (history.py)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = restarted_log(loop, "drift-detector", since, killed_pid)
        found = next((m for m in map(WARM_START.search, lines) if m), None)
        if found:
            return {"champion": found.group(1), "replayed": int(found.group(2))}
        if time.monotonic() > deadline:
            # Why it may be missing: the replay failed ("warm start failed, starting with empty windows"),
            # or no champion became known ("the warm start waits for one"); the tail says which.
            return {"replayed": None, "log": log_tail(lines)}
        time.sleep(0.5)


RESUMED = re.compile(r"online challenger resumed: (\d+) labels learned since champion (\S+) learned again")


def of_line(candidates: dict[str, dict], version: str | None, champion: str, before_ms: int) -> bool:
    """Whether ``version`` is ``champion`` or one of its line's online snapshots created before ``before_ms``."""
    seen: set[str] = set()
    while version is not None and version not in seen:
        if version == champion:
            return True
        seen.add(version)
        record = candidates.get(version)
        if record is None or record["trigger"] != "ONLINE" or millis(record["created_at"]) > before_ms:
            return False
        version = record["parent_version"]
    return False


def resumed_line(loop: FaultLoop, since: int, killed_pid: int, killed_at_ms: int, timeout_s: float = 60.0) -> dict:
    """What the restarted retrainer learned again, and the first candidate of the line it resumed.

    Only candidates created after the kill count: the killed process's own start where they should.

    From its log line and the candidates topic: the line's first candidate must start, in every
    partition, right after what its champion's learner had read when that champion is an online
    candidate (services/retrainer/resume.py); before, it started at the committed offsets. When the
    line had published snapshots since its champion before the kill, the resumed line goes on from
    the newest (its parent): it must start right after what that snapshot's learner had read.
    """
    found = None
    deadline = time.monotonic() + timeout_s
    while True:
        lines = restarted_log(loop, "retrainer", since, killed_pid)
        found = next((m for m in map(RESUMED.search, lines) if m), None)
        if found is None and any("cannot read back the labels" in line for line in lines):
            return {"resumed": False, "log": log_tail(lines)}
        if found is not None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if found is None:
        # Why it may be missing: the champion did not load ("cannot load champion"), so no line resumed.
        return {"resumed": None, "log": log_tail(lines)}
    champion = found.group(2)
    notes: dict = {"resumed": True, "learned_again": int(found.group(1)), "champion": champion}
    while time.monotonic() < deadline:
        candidates = {r.value["version"]: r.value for rs in loop.read_topic("model_candidates").values() for r in rs}
        line = sorted((c for c in candidates.values()
                       if c["trigger"] == "ONLINE" and millis(c["created_at"]) > killed_at_ms
                       and of_line(candidates, c["parent_version"], champion, killed_at_ms)),
                      key=lambda c: c["version"])
        if line:
            notes["parent"] = line[0]["parent_version"]
            if notes["parent"] != champion:  # the newest snapshot of the line before the kill
                snapshot = candidates[notes["parent"]]
                notes["parent_next"] = {e["partition"]: e["offset"] + 1 for e in snapshot["read_through"] or []}
            parent = candidates.get(champion)
            rollbacks = {r.value["to_version"] for rs in loop.read_topic("model_decisions").values() for r in rs
                         if r.value["kind"] == "ROLLBACK"}
            # A rollback target's line restarted at its deployment, not after what it had learned.
            notes["champion_trigger"] = "ROLLBACK" if champion in rollbacks else parent["trigger"] if parent else None
            notes["champion_next"] = {e["partition"]: e["offset"] + 1 for e in parent["read_through"] or []} \
                if parent else {}
            notes["line_starts"] = {r["partition"]: r["start"] for r in line[0]["source_offsets"]}
            notes["first_offsets"] = {p: min(r.offset for r in rs)
                                      for p, rs in loop.read_topic("labeled_examples").items() if rs}
            return notes
        time.sleep(0.5)
    notes["line_starts"] = None  # the champion changed before the resumed line published
    return notes


@pytest.mark.parametrize("service", ["featurizer", "online-scorer", "ground-truth-collector", "drift-detector",
                                     "retrainer", "model-publisher"])
def test_sigkill_mid_stream_and_restart(loop: FaultLoop, service: str):
    started = time.monotonic()
    demo = events(EVENTS, seed=_seed(f"kill-{service}"), rate_per_s=RATE)
    process = loop.service(service)
    killed: dict[str, float] = {}

    recovery: list[float | None] = []

    def kill() -> None:
        killed["log_offset"] = log_size(loop, service)  # what the restarted instances log comes after
        killed["pid"] = process.pid  # type: ignore[assignment]
        killed["at"] = time.monotonic()
        killed["at_ms"] = time.time() * 1000
        os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        threading.Thread(target=lambda: recovery.append(wait_processing(process, killed["at"], killed["pid"])),
                         daemon=True).start()

    producer = loop.stream(demo, RATE, at={KILL_AT: kill})
    producer.finish(120)
    assert killed, "the kill never ran"
    loop.wait_until_restarted(process)
    restarted_pid = process.pid
    assert restarted_pid is not None and restarted_pid != killed["pid"]
    result = verify(loop, ScenarioResult(f"sigkill {service}"), demo)
    # Read before the wait below fixes its targets, so every candidate here is one the publisher must reach.
    candidates = {r.value["version"] for rs in loop.read_topic("model_candidates").values() for r in rs} \
        if service == "model-publisher" else set()
    consumed = loop.wait_consumed(service, INPUTS[service], timeout_s=90)
    if service == "ground-truth-collector":  # and its two stateful stages, on its internal topics
        group = loop.group_of(service)
        for stage, topic in ((".join", f"{group}-by-event"), (".score", f"{group}-joined")):
            stage_consumed = loop.wait_consumed(service, [], timeout_s=90, stage=stage, topics=[topic])
            consumed["behind"] |= stage_consumed["behind"]
            consumed[f"records{stage}"] = stage_consumed["records"]
    result.notes["inputs_consumed"] = consumed
    if service == "model-publisher":  # its own outputs: every candidate it read was registered or refused
        decided = {r.value["to_version"] for rs in loop.read_topic("model_decisions").values() for r in rs
                   if r.value["kind"] in ("REGISTER", "REFUSE")}
        result.notes["candidates"] = len(candidates)
        result.notes["candidates_undecided"] = sorted(candidates - decided)
    since, killed_pid = int(killed["log_offset"]), int(killed["pid"])
    if service == "drift-detector":  # its own state: the restarted detector refilled its windows
        result.notes["warm_start"] = warm_start(loop, since, killed_pid)
    if service == "retrainer":  # its own output: the restarted learner went on with its line's labels
        result.notes["resume"] = resumed_line(loop, since, killed_pid, int(killed["at_ms"]))
    deadline = time.monotonic() + 60
    while not recovery and time.monotonic() < deadline:
        time.sleep(0.2)
    result.recover_s = recovery[0] if recovery else None
    result.elapsed_s = round(time.monotonic() - started, 1)
    result.notes |= {"restart_after_s": round(process.started_at - killed["at"], 2), "restarts": process.restarts,
                     "restarted_pid": restarted_pid}
    # The log tails go into the failure messages below, not into the report line.
    log_of = {key: result.notes[key].pop("log", "") for key in ("warm_start", "resume") if key in result.notes}
    result.report()
    assert result.recover_s is not None, f"{service} did not process anything after its restart"
    # The killed service's own inputs: its group went on past every record, those it had read but
    # not committed before the kill included (the outputs above only count the inference path's).
    assert consumed["records"] > 0 and not consumed["behind"], consumed
    if service == "ground-truth-collector":
        assert consumed["records.join"] > 0 and consumed["records.score"] > 0, consumed
    if service == "model-publisher":
        assert result.notes["candidates"] > 0 and not result.notes["candidates_undecided"], result.notes
    if service == "drift-detector":
        # Features and predictions each refill at least a window (more than one window of each was
        # consumed before the kill): reference records since the champion's deployment, then the latest.
        assert (result.notes["warm_start"]["replayed"] or 0) >= 2 * loop.spec.drift.window_size, \
            f"{result.notes}\n--- the restarted detector's log:\n{log_of['warm_start']}"
    if service == "retrainer":
        resume = result.notes["resume"]
        assert resume["resumed"], f"{resume}\n--- the restarted retrainer's log:\n{log_of['resume']}"
        assert resume["line_starts"] is not None, \
            f"the resumed line's start was not checked: the champion changed before the resumed line published; " \
            f"{resume}"
        assert resume["line_starts"], resume
        # Whatever the champion, the resumed line never learns again what its champion learned: it
        # starts at or after the offset following the champion's read_through in every partition
        # (champion_next; empty for the bootstrap, which has no candidate record). For an online
        # champion the line starts exactly there (below). For a rollback target resume.py does not
        # use read_through: the line restarted when the rollback deployed it, so it resumes from
        # the first label at or after that deployment's deployed_at ("close, not exact", and cut
        # to the resume's limit and the group's committed offsets, which only move it later);
        # that deployment came after the target was built, so after its learner had read through
        # read_through, and each of those labels is later in its partition than what it learned.
        relearned = {p: (start, resume["champion_next"][p]) for p, start in resume["line_starts"].items()
                     if start < resume["champion_next"].get(p, 0)}
        assert not relearned, f"the resumed line learns again what its champion learned (start, champion's next): " \
                              f"{relearned}; {resume}"
        # The line goes on from its newest snapshot since the champion, if it had published one before the kill.
        continued = resume.get("parent") not in (None, resume["champion"])
        if continued:
            # Where the snapshot's learner had read to, in every partition.
            assert all(resume["parent_next"].get(p) == start for p, start in resume["line_starts"].items()), resume
        elif resume["champion_trigger"] == "ONLINE":
            # read_through names every partition: the line starts where the champion's learner had read to.
            assert all(resume["champion_next"].get(p) == start for p, start in resume["line_starts"].items()), resume
        elif "-bootstrap-" in resume["champion"]:
            # it learned every label
            assert all(resume["first_offsets"][p] == start for p, start in resume["line_starts"].items()), resume
        # Otherwise (a rollback target, a rebuild) no exact start is known here: the bound above holds.
    assert_sound(result)


def test_redis_restart_mid_stream(loop: FaultLoop):
    started = time.monotonic()
    redis = loop.embedded_redis  # type: ignore[attr-defined]
    if redis is None:
        pytest.skip("REDIS_URL names an external Redis; this test restarts the embedded one")
    demo = events(EVENTS, seed=_seed("redis-restart"), rate_per_s=RATE)
    restarted: dict[str, float] = {}
    at, reached = when(KILL_AT)
    producer = loop.stream(demo, RATE, at=at)
    assert reached.wait(60)
    restarted["at"] = time.monotonic()
    redis.restart()  # SIGTERM (the append-only file is flushed), then start on the same port
    restarted["up"] = time.monotonic()
    producer.finish(120)
    result = verify(loop, ScenarioResult("redis restart"), demo)
    result.elapsed_s = round(time.monotonic() - started, 1)
    result.recover_s = round(restarted["up"] - restarted["at"], 2)
    result.notes |= {"service_restarts": {p.instance_id: p.restarts for p in loop.stack.processes if p.restarts}}
    result.report()
    assert_sound(result)


def test_sigstop_past_the_session_timeout_then_sigcont(loop: FaultLoop):
    started = time.monotonic()
    demo = events(EVENTS, seed=_seed("sigstop"), rate_per_s=RATE)
    process = loop.service("featurizer")
    restores_before = process.log_path.read_text(errors="replace").count("rebuilt ")
    paused: dict[str, float] = {}

    def pause() -> None:
        paused["at"] = time.monotonic()
        os.kill(process.pid, signal.SIGSTOP)  # type: ignore[arg-type]

    producer = loop.stream(demo, RATE, at={KILL_AT: pause})
    wait_until(lambda: "at" in paused, producer)
    time.sleep(SESSION_TIMEOUT_MS / 1000 + 3)
    os.kill(process.pid, signal.SIGCONT)  # type: ignore[arg-type]
    resumed = time.monotonic()
    producer.finish(120)
    result = verify(loop, ScenarioResult("sigstop featurizer past session timeout"), demo)
    result.elapsed_s = round(time.monotonic() - started, 1)
    first_after = min((t for i, t in loop.reader.observed.first_prediction_at.items()
                       if t > resumed), default=None)
    result.recover_s = round(first_after - resumed, 2) if first_after else None
    log = process.log_path.read_text(errors="replace")
    result.notes |= {"stopped_s": round(resumed - paused["at"], 1), "featurizer_restarts": process.restarts,
                    "state_rebuilds_after_sigcont": log.count("rebuilt ") - restores_before,
                    "commit_failures": log.count("commit failed"),
                    # noida-db sometimes fences the resumed static member (FENCED_INSTANCE_ID); the runner
                    # then exits non-zero and the supervisor restarts it.
                    "fenced": log.count("fatal consumer error")}
    result.report()
    assert_sound(result)
