"""`streamloop top` draws the dashboard's snapshot in the terminal."""

from rich.console import Console

from streamloop.cli.top_command import render_snapshot, sparkline
from streamloop.dashboard import DashboardModel
from tests.unit.dashboard.conftest import T0, alert, read
from tests.unit.dashboard.test_assembly import loaded_model


def test_top_renders_the_same_snapshot():
    console = Console(record=True, width=160)
    console.print(render_snapshot(loaded_model().snapshot()))
    screen = console.export_text()
    for expected in ("champion v1", "accuracy 0.91", "ALERT stale_model", "country=NG", "featurizer", "PROMOTE",
                     "online-scorer ← f", "in.dlq",
                     "amount +1.250, country -0.500"):
        assert expected in screen, expected
    empty = Console(record=True, width=160)
    empty.print(render_snapshot(DashboardModel("p").snapshot()))
    nothing_yet = empty.export_text()
    assert "champion -  accuracy -" in nothing_yet, "nothing known yet: dashes, not a crash"
    assert "dead letters -" in nothing_yet, "not read yet: a dash, not None"


def test_top_shows_no_throughput_for_a_service_that_stopped_answering(scorer):
    """Ten minutes after the scorer's last answer, top still showed its 1,000 records/s of then."""
    at = T0 / 1000
    model = DashboardModel("demo")
    model.add_scrape(at, {"online-scorer-0": read(scorer)}, 1)
    scorer.record_batch("features.v1", 1, 2000, 0.01)
    model.add_scrape(at + 2, {"online-scorer-0": read(scorer)}, 1)
    assert throughput_rows(model.snapshot(now_s=at + 2)) == [["online-scorer ← features.v1", "1000.0"]]
    for i in range(300):  # scrapes the scorer does not answer
        model.add_scrape(at + 4 + 2 * i, {}, 1)
    assert throughput_rows(model.snapshot(now_s=at + 604)) == [["online-scorer ← features.v1", "-"]]


def throughput_rows(snapshot: dict) -> list[list[str]]:
    """The series and last value of each row of top's throughput table."""
    console = Console(record=True, width=160)
    console.print(render_snapshot(snapshot))
    screen = console.export_text().split("throughput (records/s)")[1].split("event latency")[0]
    return [[cell.strip() for cell in line.split("│")[1:3]] for line in screen.splitlines() if line.count("│") == 4]


def test_sparkline_scales_between_min_and_max():
    assert sparkline([0.0, None, 0.5, 1.0]) == "▁▅█"
    assert sparkline([2.0, 2.0]) == "▁▁" and sparkline([]) == ""


def test_top_says_what_keeps_the_monitoring_topics_off_the_screen():
    model = DashboardModel("p")
    model.source_error("kafka", "waiting for topics monitoring.alert.v1 (not created yet, or not readable by "
                                "this client)")
    console = Console(record=True, width=200)
    console.print(render_snapshot(model.snapshot()))
    assert "monitoring topics: waiting for topics monitoring.alert.v1" in console.export_text()
    model.source_error("kafka", None)
    console = Console(record=True, width=200)
    console.print(render_snapshot(model.snapshot()))
    assert "monitoring topics:" not in console.export_text()


def test_top_names_the_slot_and_replica_of_an_active_load_failure():
    model = DashboardModel("p")
    model.add_record("alerts", "model_load_failed", alert("model_load_failed", "RAISED", T0, "v2", {
        "slot": "champion", "instance": "online-scorer-0"}, "online-scorer"))
    console = Console(record=True, width=200)
    console.print(render_snapshot(model.snapshot()))
    assert "ALERT model_load_failed: model_load_failed raised (online-scorer slot=champion instance=online-scorer-0)" \
        in console.export_text()
