"""The admin pages in a real browser: headless Chromium driven by Selenium.

Each test logs a superuser in through the admin's login form, opens pages of
the live server and asserts on what an operator sees there: layout (no
horizontal scrolling at 1400 px), links, filters, times and the traceback.
A screenshot of every page visited is saved to ``PGQS_ARTIFACTS_DIR``
(default ``tests/artifacts/`` in the repository).

Needs Debian's ``chromium`` and ``chromium-driver`` packages and the
``selenium`` package; without them the module is skipped.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import django.contrib.admin
import pytest
from django.contrib.auth.models import User
from django.db import connection, connections
from django.test.utils import override_settings
from django.urls import reverse
from django.utils import timezone
from pytest_django.live_server_helper import LiveServer

from pgqueue_sync.contrib.django import enqueue, get_queries
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.contrib.django.models import QueueJob, QueueLog
from pgqueue_sync.contrib.django.testing import drain
from pgqueue_sync.models import TracebackRecord
from pgqueue_sync.types import JobId

from .shop import tasks

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the module is skipped then
    HAVE_SELENIUM = False
else:
    HAVE_SELENIUM = True

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.access("/usr/bin/chromedriver", os.X_OK) else None
)
#: The browser window: the width the jobs list must fit.
WINDOW_WIDTH, WINDOW_HEIGHT = 1400, 900
#: Seconds an explicit wait (an element, a URL) may take.
WAIT_SECONDS = 15.0
#: Seconds a page may take to load.
PAGE_LOAD_SECONDS = 30.0
#: Screenshots show the whole page down to this height (CSS pixels).
SCREENSHOT_MAX_HEIGHT = 4000
#: Where django.contrib.admin keeps its CSS and JavaScript (``admin/...``).
ADMIN_STATIC_ROOT = Path(django.contrib.admin.__file__).resolve().parent / "static"
TIME_SHAPE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def _missing() -> str:
    missing = [
        *([] if HAVE_SELENIUM else ["the selenium package (pip install 'selenium>=4.20')"]),
        *([] if CHROMIUM else ["the chromium browser (apt-get install chromium)"]),
        *([] if CHROMEDRIVER else ["chromedriver (apt-get install chromium-driver)"]),
    ]
    return "; ".join(missing)


pytestmark = [
    pytest.mark.skipif(bool(_missing()), reason=f"browser tests need {_missing()}"),
    pytest.mark.usefixtures("pgqueue_truncate"),
]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """pytest-django's live server, serving the admin's own CSS and JavaScript.

    The test settings have no ``STATIC_URL`` (nothing else needs one), and
    pytest-django's static handler cannot start without it. This server runs
    with ``STATIC_URL`` set and ``django.contrib.admin``'s static directory as
    ``STATIC_ROOT``, so the pages are styled as in production. pytest-django's
    ``_live_server_helper`` still gives each test a transactional database.
    """
    address = (
        request.config.getvalue("liveserver")
        or os.getenv("DJANGO_LIVE_TEST_SERVER_ADDRESS")
        or "localhost"
    )
    with override_settings(STATIC_URL="/static/", STATIC_ROOT=str(ADMIN_STATIC_ROOT)):
        server = LiveServer(address)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module", autouse=True)
def django_pool_open(django_db_setup: None, django_db_blocker: Any) -> None:
    """With Django's connection pool (``PGQS_TEST_DJANGO_POOL=1``), open it before the tests.

    The live server's threads take their connections from it: were the pool
    created during a test (after another module closed it, as a change of
    ``TIME_ZONE`` does), its worker threads would count as left behind by that test.
    """
    with django_db_blocker.unblock():
        for alias in connections:
            pool = getattr(connections[alias], "pool", None)  # Django 5.1+, when configured
            if pool is not None:
                pool.open()  # as Django does at its first connection; idempotent


@pytest.fixture(scope="module")
def artifacts_dir() -> Path:
    """Where screenshots go: ``PGQS_ARTIFACTS_DIR``, else ``tests/artifacts/``."""
    path = Path(os.environ.get("PGQS_ARTIFACTS_DIR") or REPO_ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A headless Chromium with a 1400x900 window, quit after the test."""
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", f"--window-size={WINDOW_WIDTH},{WINDOW_HEIGHT}",
        "--disable-gpu", "--disable-dev-shm-usage", "--lang=en-US", "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
        yield driver
    finally:
        driver.quit()


class AdminPages:
    """A logged-in browser on the live server, saving a screenshot of each page it checks."""

    def __init__(self, driver: WebDriver, base_url: str, artifacts: Path, test_name: str):
        self.driver = driver
        self.base_url = base_url
        self.artifacts = artifacts
        self.test_name = test_name
        self.wait = WebDriverWait(driver, WAIT_SECONDS)

    def open(self, path: str, ready: str = "#content") -> None:
        """Load ``path`` and wait for the CSS selector ``ready`` (and the admin's stylesheet)."""
        self.driver.get(self.base_url + path)
        self.wait_for(ready)
        self.wait_until_styled()

    def wait_for(self, selector: str) -> WebElement:
        element: WebElement = self.wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, selector)),
            f"no {selector!r} on {self.driver.current_url}",
        )
        return element

    def wait_for_path(self, predicate: Callable[[str], bool], what: str) -> None:
        self.wait.until(lambda d: predicate(d.current_url), f"never reached {what}")

    def wait_until_styled(self) -> None:
        """The admin's base.css has applied (so sizes and layout are production's)."""
        self.wait.until(
            lambda d: d.execute_script(
                "return document.readyState === 'complete' && "
                "Array.from(document.styleSheets).some("
                "  s => (s.href || '').endsWith('/static/admin/css/base.css'))"
            ),
            "the admin's stylesheet never loaded",
        )

    def login(self, username: str, password: str) -> None:
        self.open("/admin/login/?next=/admin/", ready="#login-form")
        self.driver.find_element(By.ID, "id_username").send_keys(username)
        self.driver.find_element(By.ID, "id_password").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
        self.wait_for("#user-tools")
        self.wait_for_path(lambda url: url.endswith("/admin/"), "the admin index")

    def screenshot(self, page: str) -> Path:
        """Save the whole page (not just the window; at most ``SCREENSHOT_MAX_HEIGHT`` px)."""
        path = self.artifacts / f"{self.test_name}--{page}.png"
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "scale": 1,
                "height": min(size["height"], SCREENSHOT_MAX_HEIGHT)}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def text(self, element: WebElement) -> str:
        """The text as written in the page (``textContent``: no CSS upper-casing)."""
        return str(element.get_attribute("textContent") or "").strip()

    def filter_options(self, title: str) -> list[str]:
        """The options of the sidebar filter "By <title>", in order ("All" first)."""
        links = self.driver.find_elements(
            By.CSS_SELECTOR, f'#changelist-filter details[data-filter-title="{title}"] li a'
        )
        return [self.text(link) for link in links]

    def selected_filter_option(self, title: str) -> str:
        [selected] = self.driver.find_elements(
            By.CSS_SELECTOR, f'#changelist-filter details[data-filter-title="{title}"] li.selected'
        )
        return self.text(selected)

    def assert_no_horizontal_scrolling(self) -> None:
        widths = self.layout()
        assert widths["scrollWidth"] <= widths["innerWidth"], widths
        # Stricter: nothing hides under a vertical scrollbar either (headless Chromium
        # hides scrollbars, so the two are equal here; not in a desktop browser) ...
        assert widths["scrollWidth"] <= widths["clientWidth"], widths
        # ... and the change list does not scroll inside its own box.
        assert widths["tableScrollWidth"] <= widths["tableClientWidth"], widths

    def column(self, name: str) -> list[str]:
        """The texts of one change-list column (``field-<name>`` cells), top to bottom."""
        cells = self.driver.find_elements(By.CSS_SELECTOR, f"#result_list .field-{name}")
        return [self.text(cell) for cell in cells]

    def row_of(self, cell_class: str, text: str) -> WebElement:
        """The change-list row whose ``field-<cell_class>`` cell reads ``text``."""
        for row in self.driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr"):
            cells = row.find_elements(By.CSS_SELECTOR, f".field-{cell_class}")
            if cells and self.text(cells[0]) == text:
                return row
        raise AssertionError(f"no row with {cell_class} {text!r} on {self.driver.current_url}")

    def layout(self) -> dict[str, int]:
        """The page's widths: the document's scroll width against the window's, and the
        change list's (the admin scrolls a too wide table inside its own box)."""
        values: dict[str, int] = self.driver.execute_script(
            "return {scrollWidth: document.documentElement.scrollWidth,"
            " clientWidth: document.documentElement.clientWidth,"
            " innerWidth: window.innerWidth,"
            " tableScrollWidth: (document.querySelector('.results') || {}).scrollWidth || 0,"
            " tableClientWidth: (document.querySelector('.results') || {}).clientWidth || 0}"
        )
        return values


@pytest.fixture
def pages(
    browser: WebDriver, live_server: LiveServer, admin_user: User, artifacts_dir: Path,
    request: pytest.FixtureRequest,
) -> AdminPages:
    """The browser, logged in as pytest-django's superuser (``admin`` / ``password``)."""
    pages = AdminPages(browser, live_server.url, artifacts_dir, request.node.name)
    pages.login(admin_user.get_username(), "password")
    return pages


# -- data --------------------------------------------------------------------------------------


def _charge(order: int) -> None:
    raise ValueError(f"card declined for <order {order}>\nsecond line of the message")


def _checkout(order: int) -> None:
    _charge(order)


def _real_failure(job_id: JobId) -> TracebackRecord:
    """The record a worker writes for a handler that raised two calls deep."""
    try:
        _checkout(42)
    except ValueError as exc:
        return TracebackRecord.from_exception(exc, job_id=job_id,
                                              additional_context={"attempt": 1})
    raise AssertionError("unreachable")


def _hold(job_id: JobId) -> TracebackRecord:
    """Leave ``job_id`` as a worker with ``on_failure="hold"`` does: ``failed``, logged."""
    record = _real_failure(job_id)
    assert get_queries().log_jobs([(job_id, "failed", record)]) == [job_id]
    return record


def _seconds(value: datetime) -> str:
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _url(name: str, *args: Any) -> str:
    return str(reverse(f"admin:pgqueue_sync_{name}", args=args))


LONG_ENTRYPOINTS = [
    "billing.invoices.send_overdue_payment_reminder_with_pdf_attachment",
    "warehouse.inventory.recompute_stock_levels_for_every_location_nightly",
    "django_tasks:default",
]


LONG_PAYLOAD = b'{"invoice":"INV-2024-000123","customer":"acme-corporation-international"}' * 4


def _production_sized_ids() -> None:
    """Make the next job and log ids nine digits long, as in a queue that has run for a while."""
    names = get_settings().db_settings
    with connection.cursor() as cursor:
        for table in ("queue_table", "queue_table_log"):
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
                [names.ident(table).as_string(), 123_456_789],
            )


def _busy_queue() -> dict[str, JobId]:
    """Jobs as a busy production queue has them: long names, long and binary payloads,
    nine-digit ids, a held job."""
    _production_sized_ids()
    ids = enqueue(
        LONG_ENTRYPOINTS,
        [LONG_PAYLOAD, b"\xff\xfe" + bytes(range(254)), None],
        priority=[-100, 100, 0],
        headers=[{"trace": "t-1"}, None, None],
    )
    held = enqueue("payments.charge_card", b"42")[0]
    _hold(held)
    return {"long": ids[0], "binary": ids[1], "empty": ids[2], "held": held}


# -- tests -------------------------------------------------------------------------------------


def test_jobs_list_fits_a_1400px_window(pages: AdminPages) -> None:
    jobs = _busy_queue()
    pages.open(_url("queuejob_changelist"), ready="#result_list")
    assert pages.driver.execute_script("return window.innerWidth") == WINDOW_WIDTH
    pages.screenshot("jobs")

    pages.assert_no_horizontal_scrolling()
    assert sorted(pages.column("id"), key=int) == sorted(str(i) for i in jobs.values())
    for entrypoint in LONG_ENTRYPOINTS:
        pages.row_of("entrypoint_text", entrypoint)
    held = pages.row_of("id", str(jobs["held"]))
    assert pages.text(held.find_element(By.CSS_SELECTOR, ".field-status")) == "failed"
    for name in ("created_time", "execute_after_time"):
        assert all(TIME_SHAPE.match(text) for text in pages.column(name)), name
    payloads = pages.column("payload_short")
    assert any(text.startswith("'{\"invoice\"") and text.endswith(f"({len(LONG_PAYLOAD)} bytes)")
               for text in payloads), payloads
    assert any(text.startswith("hex ff fe 00 01") for text in payloads), payloads
    # The queue table holds only waiting, running and held jobs.
    assert pages.filter_options("status") == ["All", "queued", "picked", "failed"]


def test_job_detail_shows_payload_headers_times_and_its_log(pages: AdminPages) -> None:
    [job_id] = enqueue("shop.admin_detail", b"<script>alert(1)</script>",
                       headers={"trace": "t-1", "tenant": "acme"})
    pages.open(_url("queuejob_change", job_id), ready=".field-payload_preview pre")
    pages.screenshot("job")

    job = QueueJob.objects.get(id=job_id)
    payload = pages.driver.find_element(By.CSS_SELECTOR, ".field-payload_preview pre")
    assert pages.text(payload) == "'<script>alert(1)</script>'"  # shown, not run
    headers = pages.text(pages.driver.find_element(By.CSS_SELECTOR, ".field-headers_pretty pre"))
    assert headers == '{\n  "tenant": "acme",\n  "trace": "t-1"\n}'
    created = pages.driver.find_element(By.CSS_SELECTOR, ".field-created_time time")
    assert pages.text(created) == _seconds(job.created)
    assert not pages.driver.find_elements(By.CSS_SELECTOR, "[name=_save]")
    pages.assert_no_horizontal_scrolling()

    pages.driver.find_element(By.CSS_SELECTOR, ".field-log_rows a").click()
    pages.wait_for_path(lambda url: url.endswith(f"?job_id={job_id}"), "the job's log rows")
    pages.wait_for("#result_list")
    pages.wait_until_styled()
    pages.screenshot("job-log-rows")
    assert pages.column("status") == ["queued"]


def test_log_list_shows_errors_seconds_and_links_each_job(pages: AdminPages) -> None:
    jobs = _busy_queue()
    [finished] = enqueue("shop.admin_cancelled")
    assert get_queries().mark_job_as_cancelled([finished]) == [finished]
    pages.open(_url("queuelog_changelist"), ready="#result_list")
    pages.screenshot("log")

    headers = [pages.text(th).lower() for th in
               pages.driver.find_elements(By.CSS_SELECTOR, "#result_list thead th")]
    assert "error" in headers and "created" in headers, headers
    entry = QueueLog.objects.get(job_id=jobs["held"], status="failed")
    row = pages.row_of("id", str(entry.id))
    assert pages.text(row.find_element(By.CSS_SELECTOR, ".field-error_short")) == (
        "ValueError: card declined for <order 42> second line of the message"
    )
    created = pages.text(row.find_element(By.CSS_SELECTOR, ".field-created_time"))
    assert TIME_SHAPE.match(created) and created == _seconds(entry.created)
    assert all(TIME_SHAPE.match(text) for text in pages.column("created_time"))
    queued_rows = QueueLog.objects.filter(status="queued").count()
    assert pages.column("error_short").count("-") == queued_rows + 1  # and the canceled row
    pages.assert_no_horizontal_scrolling()

    # A finished job's id is not a link (its row left the queue); its log rows are.
    gone = pages.row_of("status", "canceled")
    assert not gone.find_elements(By.CSS_SELECTOR, "a.pgqs-job")
    assert gone.find_elements(By.CSS_SELECTOR, "a.pgqs-log-rows")

    # The held job's id leads to the job ...
    job_link = row.find_element(By.CSS_SELECTOR, ".field-job a.pgqs-job")
    assert pages.text(job_link) == str(jobs["held"])
    job_link.click()
    job_path = _url("queuejob_change", jobs["held"])
    pages.wait_for_path(lambda url: url.endswith(job_path), "the job's page")
    pages.wait_for(".field-status")
    pages.wait_until_styled()
    pages.screenshot("log-job")
    assert pages.text(pages.driver.find_element(By.CSS_SELECTOR, ".field-status .readonly")) \
        == "failed"

    # ... and its "log rows" link to every log row of that job.
    pages.driver.back()
    row = pages.row_of("id", str(entry.id))
    row.find_element(By.CSS_SELECTOR, ".field-job a.pgqs-log-rows").click()
    pages.wait_for_path(lambda url: url.endswith(f"?job_id={jobs['held']}"), "the job's rows")
    pages.wait_for("#result_list")
    pages.wait_until_styled()
    pages.screenshot("log-job-rows")
    assert pages.column("status") == ["failed", "queued"]
    assert {text.split(" ")[0] for text in pages.column("job")} == {str(jobs["held"])}
    assert pages.filter_options("job") == ["All", f"job {jobs['held']}"]
    assert pages.selected_filter_option("job") == f"job {jobs['held']}"


def test_log_detail_shows_the_traceback_as_lines(pages: AdminPages) -> None:
    [job_id] = enqueue("payments.charge_card", b"42")
    record = _hold(job_id)
    entry = QueueLog.objects.get(job_id=job_id, status="failed")
    pages.open(_url("queuelog_change", entry.id), ready=".field-traceback_text pre")

    pre = pages.driver.find_element(By.CSS_SELECTOR, ".field-traceback_text pre")
    pages.screenshot("log-entry")

    shown = str(pre.text)  # as rendered: line breaks are real ones, not JSON's "\n"
    assert "\n" in shown
    expected = [line.strip() for line in record.traceback.strip().splitlines()]
    assert [line.strip() for line in shown.splitlines()] == expected
    assert shown.splitlines()[0] == "Traceback (most recent call last):"
    assert any("_checkout(42)" in line for line in expected)
    lines_tall = pages.driver.execute_script(
        "const pre = arguments[0], style = getComputedStyle(pre);"
        "let line = parseFloat(style.lineHeight);"
        "if (Number.isNaN(line)) line = parseFloat(style.fontSize) * 1.2;"
        "return pre.getBoundingClientRect().height / line;", pre,
    )
    assert lines_tall >= len(expected) - 0.5, (lines_tall, len(expected))

    error = pages.text(pages.driver.find_element(By.CSS_SELECTOR, ".field-error_message pre"))
    assert error == "ValueError: card declined for <order 42>\nsecond line of the message"
    context = pages.text(pages.driver.find_element(By.CSS_SELECTOR, ".field-error_context pre"))
    assert '"attempt": 1' in context and f'"job_id": {job_id}' in context
    created = pages.driver.find_element(By.CSS_SELECTOR, ".field-created_time time")
    assert pages.text(created) == _seconds(entry.created)
    pages.assert_no_horizontal_scrolling()


def test_status_filters_offer_what_each_table_holds(pages: AdminPages) -> None:
    # Two Django Tasks run here (committed: the test runs in autocommit), one failing.
    added, exploded = tasks.add.enqueue(1, 2), tasks.explode.enqueue("no <b>luck</b>")
    assert drain().counts == {"successful": 1, "exception": 1}
    _busy_queue()
    pages.open(_url("queuejob_changelist"), ready="#changelist-filter")
    assert pages.filter_options("status") == ["All", "queued", "picked", "failed"]

    pages.open(_url("queuelog_changelist"), ready="#changelist-filter")
    assert pages.filter_options("status") == [
        "All", "queued", "picked", "successful", "exception", "canceled", "deleted", "failed",
    ]
    pages.driver.find_element(
        By.CSS_SELECTOR, '#changelist-filter a[href*="status__exact=failed"]').click()
    pages.wait_for_path(lambda url: "status__exact=failed" in url, "the failed log rows")
    pages.wait_for("#result_list")
    pages.wait_until_styled()
    pages.screenshot("log-failed")
    assert pages.selected_filter_option("status") == "failed"
    assert pages.column("status") == ["failed"]

    pages.open(_url("queueresult_changelist"), ready="#result_list")
    pages.screenshot("results")
    assert pages.filter_options("status") == [
        "All", "queued", "successful", "exception", "canceled", "failed",
    ]
    assert sorted(pages.column("status")) == ["exception", "successful"]
    failed = pages.row_of("job_id", exploded.id)
    assert pages.text(failed.find_element(By.CSS_SELECTOR, ".field-error_short")) == (
        "ValueError: no <b>luck</b>"
    )
    assert pages.text(pages.row_of("job_id", added.id).find_element(
        By.CSS_SELECTOR, ".field-error_short")) == "-"
    assert all(TIME_SHAPE.match(text) for text in pages.column("finished_time"))
    pages.assert_no_horizontal_scrolling()
