"""Malformed input to the console's pages and to the OpenAI-compatible gateway: a clear 4xx (or, on a
page, the form again with its error), never a 500, never a traceback, never a hung request.

Pages: every page of the URL configuration (tests/support/urlconf.py), filled with workspace A's objects
of the permission matrix's world (its rows say which kind of object each URL argument names, so a new
page has a row there before it is tried here), signed in as A's owner with a deploy wizard under way.
Each page is first visited as a person would, to find its forms (their fields, the values the page
filled in, and what each field accepts: a number's bounds, a choice's options, a text's length) and the
query parameters its links use. Then every field and every parameter gets each bad value of VALUES in
turn, the rest of the form as the page filled it, so a bad value reaches as deep as a good one would;
and each page gets the whole-request cases of QUERY_CASES, BODY_CASES and PATH_IDS. Each request runs in a
transaction that is rolled back, so no case spoils the next.

Gateway: the console's web process (uvicorn) in front of the small OpenAI-compatible upstream
(tests/support/openai_upstream.py), with a gateway key of the workspace whose deployment the upstream
serves. Each case of GATEWAY_CASES must get its status and an error in OpenAI's shape, and the upstream
must have been sent nothing (its /stats) for a body the gateway refuses.

Each test prints how many inputs it tried and what came back (`pytest -s`): the README's table."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
import requests
from django.contrib.messages import constants as message_levels
from django.contrib.messages import get_messages
from django.db import transaction
from django.test import Client
from django.urls import NoReverseMatch, Resolver404, resolve, reverse

from accounts.services import api_token_create
from config import changes
from deployments import wizard
from deployments.models import Deployment
from tests.security.conftest import MatrixSide, build_matrix_world
from tests.security.test_permission_matrix import ROWS, VALUE_KINDS, collected_urls
from tests.support.agents import wait_for
from tests.support.deployments import serve_from
from tests.support.web import read_answer

# Pages ------------------------------------------------------------------------------------------------

INVALID_UTF8 = "%FF%FE%C3%28"  # percent-encoded bytes that are no UTF-8 text
HUGE = "1" + "0" * 40  # 10**40

# The bad values every form field and query parameter is given, one at a time. Each is either a raw
# (already percent-encoded) value or a list of values (a list where one value is expected).
VALUES: dict[str, str | list[str]] = {
    "invalid UTF-8": INVALID_UTF8,
    "10**40": HUGE,
    "-1": "-1",
    "1e309 (infinite)": "1e309",
    "1e308 (finite, huge)": "1e308",
    "NaN": "NaN",
    "a string for a number or id": "x1",
    "a NUL character": "a%00b",
    "overlong (10,000 characters)": "x" * 10_000,
    "a list for a scalar": ["1", "2"],
}
# The values tried on each kind of field (invalid UTF-8 is refused before any view reads a field: it is tried
# once per form, in BODY_CASES, and once per query, in QUERY_CASES).
VALUES_FOR = {
    "number": ["10**40", "-1", "1e308 (finite, huge)", "NaN", "a string for a number or id"],
    "text": ["10**40", "a NUL character", "overlong (10,000 characters)", "a list for a scalar"],
    "choice": ["10**40", "a string for a number or id", "a list for a scalar"],
    "check": ["a string for a number or id"],
}
QUERY_VALUES = ["10**40", "-1", "NaN", "a string for a number or id", "a NUL character",
                "overlong (10,000 characters)", "a list for a scalar"]  # fmt: skip
# Values a number field must refuse whatever its bounds (10**40 and -1 are judged by the field's own max
# and min, as the page states them; a number field without a max must refuse 10**40 too).
NOT_NUMBERS = {"invalid UTF-8", "1e309 (infinite)", "NaN", "a string for a number or id", "a NUL character",
               "overlong (10,000 characters)"}  # fmt: skip
# Values no choice (a select, radio buttons) offers.
NOT_CHOICES = set(VALUES) - {"a list for a scalar"}


@dataclass(frozen=True)
class BodyCase:
    """A whole request body sent instead of the page's form: (content type, body) from the form's fields."""

    content_type: str
    make: object  # (fields: dict[str, list[str]]) -> bytes
    expected: tuple[int, ...]


def _form_bytes(fields: dict[str, list[str]]) -> bytes:
    return urlencode([(k, v) for k, values in fields.items() for v in values]).encode()


def _multipart(fields: dict[str, list[str]]) -> bytes:
    """`fields` as multipart/form-data with the boundary zz; lone surrogates stand for raw bytes (\\udcff is
    the byte 0xFF), so that a value can be bytes that are not UTF-8."""
    parts = [
        f'--zz\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, values in fields.items()
        for value in values
    ]
    return ("".join(parts) + "--zz--\r\n").encode("utf-8", "surrogateescape")


BODY_CASES: dict[str, BodyCase] = {
    "an unknown field": BodyCase(
        "application/x-www-form-urlencoded",
        lambda f: _form_bytes({**f, "zz_unknown": ["1"], "__proto__": ["x"]}),
        (200, 302, 404, 405),  # ignored: the page answers as it would without it
    ),
    "JSON, not form data": BodyCase(
        "application/json", lambda f: json.dumps({k: v[-1] for k, v in f.items()}).encode(), (415,)
    ),
    "plain text": BodyCase("text/plain", lambda f: b"name=x", (415,)),
    "XML": BodyCase("application/xml", lambda f: b"<name>x</name>", (415,)),
    # Django reads a multipart body that never ends, or whose parts have no names, as an empty form.
    "a broken multipart body": BodyCase(
        "multipart/form-data; boundary=zz",
        lambda f: b"--zz\r\nContent-Disposition: form-data\r\n\r\nx",
        (200, 302, 400, 404),
    ),
    "multipart without a boundary": BodyCase("multipart/form-data", lambda f: b"x", (400,)),
    "multipart form data that is not UTF-8": BodyCase(
        "multipart/form-data; boundary=zz", lambda f: _multipart({**f, "name": ["\udcff\udcfe"]}), (400,)
    ),
    "form data that is not UTF-8 (raw bytes)": BodyCase(
        "application/x-www-form-urlencoded", lambda f: _form_bytes(f) + b"&name=\xff\xfe", (400,)
    ),
    "form data that is not UTF-8 (percent-encoded)": BodyCase(
        "application/x-www-form-urlencoded", lambda f: _form_bytes(f) + b"&name=" + INVALID_UTF8.encode(), (400,)
    ),
    "a malformed percent-escape": BodyCase(
        "application/x-www-form-urlencoded", lambda f: _form_bytes(f) + b"&name=%ZZ%&=%", (200, 302, 404, 405)
    ),
    "2,000 fields": BodyCase(
        "application/x-www-form-urlencoded", lambda f: b"&".join(b"f%d=1" % i for i in range(2000)), (400,)
    ),
    "a body over the size cap": BodyCase(
        "application/x-www-form-urlencoded", lambda f: b"name=" + b"x" * (2 * 1024 * 1024 + 1), (400, 413)
    ),
}
# Whole-query cases for pages that answer GET.
QUERY_CASES: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "unknown parameters, names without values, values without names, broken escapes": (
        "zz_unknown=1&__proto__=x&&=&page&=x&page=%ZZ&search=%",
        None,
    ),
    "a query that is not UTF-8 (percent-encoded)": (f"search={INVALID_UTF8}", (400,)),
    "a query that is not UTF-8 (raw bytes)": ("search=\xff\xfe", (400,)),
    "2,000 parameters": ("&".join(f"p{i}=1" for i in range(2000)), (400,)),
}
# Objects of the path that do not exist or cannot: 404.
PATH_IDS = {"non-numeric": "x1", "10**40": HUGE, "invalid UTF-8": INVALID_UTF8, "negative": "-1"}

# Markers of an error shown on a page: a field's error, a form's error, an error message.
ERROR_MARKERS = ('class="text-danger small"', "alert-danger", 'class="invalid-feedback"', "errorlist")
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "Exception Value:")
# A form that a page shows but that another system answers (the gateway's, signed out) is not tried.
NOT_PAGES = ("/v1/", "/api/", "/admin/", "/static/")
# Signing in itself is the sign-in rate limit's to test: failed sign-ins would trip it (as in the matrix).
NO_POST = {"login"}
# Pages that take a POST whose form A's world does not show (its state offers no such action), each with
# the fields it reads; the others' fields come from the forms the pages show.
HIDDEN_FORMS = {
    "cluster:cached_cancel": {},  # A's copy is cached already: nothing to cancel
    "deployments:restart": {"next": "/deployments/"},  # A's deployment is stopped
    "deployments:stop": {"next": "/deployments/"},
    "deployments:rollback": {},  # it has one revision
    "deployments:attach": {"adapter": "{adapter}", "served_name": "again"},  # its one adapter is attached
}


@dataclass
class FormField:
    kind: str  # "number", "choice", "check", "text"
    values: list[str] = field(default_factory=list)  # what the page filled in (or would send)
    options: set[str] = field(default_factory=set)
    minimum: float | None = None
    maximum: float | None = None
    maxlength: int | None = None


@dataclass
class Form:
    method: str
    action: str
    fields: dict[str, FormField] = field(default_factory=dict)

    def body(self) -> dict[str, list[str]]:
        return {name: list(f.values) for name, f in self.fields.items() if f.values}


class PageReader(HTMLParser):
    """The forms of a page (with their fields) and the URLs its links and htmx attributes point at."""

    def __init__(self, url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.url = url
        self.forms: list[Form] = []
        self.links: list[str] = []
        self._form: Form | None = None
        self._select: tuple[str, FormField] | None = None
        self._textarea: tuple[str, FormField] | None = None
        self._option_selected = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for attribute in ("href", "hx-get", "hx-post", "action"):
            if a.get(attribute):
                self.links.append(a[attribute])
        if hx_post := a.get("hx-post"):
            self.forms.append(Form("post", hx_post))
        if tag == "form":
            self._form = Form((a.get("method") or "get").lower(), a.get("action") or self.url)
            self.forms.append(self._form)
        if tag == "option" and self._select is not None:
            self._option(a)
            return
        if self._form is None or not a.get("name") or a["name"] == "csrfmiddlewaretoken":
            return
        name = a["name"]
        if tag == "input":
            kind = (a.get("type") or "text").lower()
            if kind in ("submit", "button", "image", "reset", "file"):
                return
            entry = self._form.fields.setdefault(name, FormField(_kind_of_input(kind)))
            if kind in ("checkbox", "radio"):
                entry.options.add(a.get("value", "on"))
                if "checked" in a:
                    entry.values.append(a.get("value", "on"))
                elif kind == "radio" and not entry.values:
                    entry.values.append(a.get("value", "on"))  # a radio group sends one: the first, as a person
                return
            entry.values = [a.get("value", "")]
            entry.minimum, entry.maximum = _number(a.get("min")), _number(a.get("max"))
            entry.maxlength = int(a["maxlength"]) if a.get("maxlength", "").isdigit() else None
        elif tag == "select":
            self._select = (name, self._form.fields.setdefault(name, FormField("choice")))
        elif tag == "textarea":
            entry = self._form.fields.setdefault(name, FormField("text"))
            entry.maxlength = int(a["maxlength"]) if a.get("maxlength", "").isdigit() else None
            entry.values = [""]
            self._textarea = (name, entry)

    def _option(self, a: dict) -> None:
        """An option of the select being read: the selected ones are its value, else the first one."""
        _, entry = self._select
        value = a.get("value", "")
        entry.options.add(value)
        if "selected" in a:
            if not self._option_selected:
                entry.values = []
            self._option_selected = True
            entry.values.append(value)
        elif not entry.values and value:
            entry.values = [value]

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select, self._option_selected = None, False
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea is not None:
            self._textarea[1].values = [self._textarea[1].values[0] + data]


def _kind_of_input(kind: str) -> str:
    return {"number": "number", "checkbox": "check", "radio": "choice"}.get(kind, "text")


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


@dataclass
class Page:
    """One named URL filled with A's objects, and what the visit found for it."""

    name: str
    url: str
    get: bool  # A's owner may GET it
    post: bool  # it takes a POST from A's owner
    forms: list[Form] = field(default_factory=list)  # forms that post to it (exact URL first)
    parameters: set[str] = field(default_factory=set)  # query parameters its links (or GET forms) use


class Visitor:
    """A's owner's browser: a client whose cookies (session, messages) are put back after each request,
    and whose requests are rolled back."""

    def __init__(self, world) -> None:
        self.client = Client(raise_request_exception=False)
        self.client.force_login(world.users["owner"])
        session = self.client.session
        session["deploy_wizard"] = {"base": {"base": world.a.value("model"), "name": "wizard-under-way"}}
        session.save()
        self.cookies = SimpleCookie(self.client.cookies.output(header="", sep="\n"))
        self.statuses: Counter = Counter()

    def send(self, method: str, url: str, *, query: str = "", body: bytes | None = None, content_type: str = ""):
        extra = {"QUERY_STRING": query}
        with transaction.atomic():
            if method == "GET":
                response = self.client.get(url, **extra)
            else:
                response = self.client.generic(method, url, body or b"", content_type=content_type, **extra)
            content = b"".join(response.streaming_content) if response.streaming else response.content
            errors = [m for m in get_messages(response.wsgi_request) if m.level >= message_levels.ERROR]
            transaction.set_rollback(True)
        self.client.cookies = SimpleCookie(self.cookies.output(header="", sep="\n"))
        self.statuses[response.status_code] += 1
        return response, content.decode(errors="replace"), errors


def _url(name: str, side: MatrixSide) -> str:
    row = ROWS[name]
    return reverse(name, kwargs={arg: side.value(kind) for arg, kind in row.kinds.items()})


def _pages(world) -> dict[str, Page]:
    pages = {}
    for name in sorted(collected_urls()):
        row = ROWS[name]
        if row.api:
            continue
        owner = {method: expected["owner"] for method, expected in row.methods.items()}
        pages[name] = Page(
            name=name,
            url=_url(name, world.a),
            get=owner.get("GET", 405) != 405,
            post="POST" in owner and owner["POST"] != 405 and name not in NO_POST,
        )
    return pages


# URL arguments that are values rather than objects, and each value a page takes there (the permission matrix
# fills them with one): every step of the deploy wizard has a form of its own.
VALUE_ARGUMENTS = {"step": wizard.STEPS}


def _more_urls(pages: dict[str, Page], world) -> list[str]:
    urls = []
    for page in pages.values():
        row = ROWS[page.name]
        for arg, kind in row.kinds.items():
            for value in VALUE_ARGUMENTS.get(kind, ()):
                kwargs = {a: (value if a == arg else world.a.value(k)) for a, k in row.kinds.items()}
                urls.append(reverse(page.name, kwargs=kwargs))
    return urls


def _visit(visitor: Visitor, pages: dict[str, Page], more: list[str] = ()) -> None:
    """Visits every page that answers GET (and the `more` URLs: the wizard's other steps), and files each
    page's forms and links under the pages they point at."""
    urls = [page.url for page in pages.values() if page.get]
    for url in urls + [u for u in more if u not in urls]:
        response, content, _ = visitor.send("GET", url)
        assert response.status_code < 500, f"GET {url} answered {response.status_code}"
        reader = PageReader(url)
        reader.feed(content)
        for form in reader.forms:
            target = _page_of(pages, form.action)
            if target is None:
                continue
            if form.method == "post":
                # The form for this very URL first: its hidden fields name this object.
                exact = urlsplit(form.action).path == target.url
                target.forms.insert(0, form) if exact else target.forms.append(form)
            else:
                target.parameters |= set(form.fields)
        for link in reader.links:
            target = _page_of(pages, link)
            if target is not None:
                target.parameters |= {k for k, _ in parse_qsl(urlsplit(link).query, keep_blank_values=True)}


def _page_of(pages: dict[str, Page], url: str) -> Page | None:
    path = urlsplit(url).path
    if not path.startswith("/") or path.startswith(NOT_PAGES):
        return None
    try:
        match = resolve(path)
    except Resolver404:
        return None
    return pages.get(match.view_name)


def _encode(fields: dict[str, list[str]], name: str, bad: str | list[str]) -> str:
    """The form (or query) `fields` with `name`'s value replaced by `bad` (raw, percent-encoded already)."""
    parts = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, values in fields.items() if k != name for v in values]
    parts += [f"{quote(name, safe='')}={v}" for v in (bad if isinstance(bad, list) else [bad])]
    return "&".join(parts)


def _refused(response, content: str, errors) -> bool:
    """The page refused the input: a 4xx, the form again with an error, or back with an error message."""
    status = response.status_code
    return 400 <= status < 500 or (status == 200 and any(m in content for m in ERROR_MARKERS)) or bool(errors)


def _must_refuse(entry: FormField, label: str) -> bool:
    """Whether the field's own rules (as the page states them) make the bad value `label` one to refuse."""
    if label == "invalid UTF-8":
        return True
    if entry.kind == "choice":
        return label in NOT_CHOICES
    if entry.kind == "number":
        if label in NOT_NUMBERS:
            return True
        if label == "10**40" or label == "1e308 (finite, huge)":
            return True  # no number of the console is that large: a field without a max is missing one
        if label == "-1":
            return entry.minimum is not None and entry.minimum > -1
        return False
    if entry.kind == "text" and label == "overlong (10,000 characters)":
        return entry.maxlength is not None and entry.maxlength < 10_000
    return False


def _problem(page: Page, what: str, response, content: str, errors=()) -> str | None:
    """What is wrong with the page's answer to any bad input, if anything: a 5xx or a traceback."""
    if response.status_code >= 500 or any(m in content for m in TRACEBACK_MARKERS):
        detail = getattr(response, "exc_info", None)
        detail = f"{detail[0].__name__}: {detail[1]}"[:300] if detail else content[:200]
        return f"{page.name} {what}: {response.status_code} ({detail})"
    return None


@pytest.fixture
def world(db, tmp_path, settings):
    # The nodes stay online (they reported once) for as long as the test takes, so that the wizard's steps
    # place the deployment and a bad value reaches as deep as a good one.
    settings.PLUGBOARD_NODE_HEARTBEAT_SECONDS = 3600
    return build_matrix_world(tmp_path)


def test_every_page_refuses_malformed_input_with_a_4xx_or_the_form_and_its_error(world):
    visitor = Visitor(world)
    pages = _pages(world)
    more = _more_urls(pages, world)
    _visit(visitor, pages, more)
    problems: list[str] = []
    tried = Counter()

    # Each page that takes a POST has a form the console shows, or is listed with its fields.
    for name, fields in HIDDEN_FORMS.items():
        adapter = str(world.a.value("adapter"))
        form = Form(
            "post", pages[name].url, {k: FormField("text", [v.format(adapter=adapter)]) for k, v in fields.items()}
        )
        pages[name].forms.append(form)
    unreached = sorted(p.name for p in pages.values() if p.post and not p.forms)
    assert not unreached, f"No page shows a form that posts to {unreached}: list its fields in HIDDEN_FORMS."

    for page in pages.values():
        if page.get:
            for parameter in sorted(page.parameters):
                for label in QUERY_VALUES:
                    response, content, _ = visitor.send("GET", page.url, query=_encode({}, parameter, VALUES[label]))
                    tried["query parameter"] += 1
                    if problem := _problem(page, f"GET ?{parameter}= {label}", response, content):
                        problems.append(problem)
            for label, (query, expected) in QUERY_CASES.items():
                response, content, _ = visitor.send("GET", page.url, query=query)
                tried["whole query"] += 1
                if problem := _problem(page, f"GET {label}", response, content):
                    problems.append(problem)
                elif expected and response.status_code not in expected:
                    problems.append(f"{page.name} GET {label}: {response.status_code}, not {expected}")
        for url, form in _forms_by_url(page, more).items():
            baseline = _baseline(form, page, world)
            for name, entry in form.fields.items():
                for label in VALUES_FOR[entry.kind]:
                    body = _encode(baseline, name, VALUES[label]).encode()
                    response, content, errors = visitor.send(
                        "POST", url, body=body, content_type="application/x-www-form-urlencoded"
                    )
                    tried["form field"] += 1
                    what = f"POST {name}= {label} ({entry.kind})"
                    if problem := _problem(page, what, response, content, errors):
                        problems.append(problem)
                    elif _must_refuse(entry, label) and not _refused(response, content, errors):
                        where = response.get("Location", "") if response.status_code in (301, 302) else ""
                        problems.append(f"{page.name} {what}: accepted ({response.status_code} {where})")
        if page.post:
            baseline = _baseline(page.forms[0], page, world)
            for label, case in BODY_CASES.items():
                response, content, errors = visitor.send(
                    "POST", page.url, body=case.make(baseline), content_type=case.content_type
                )
                tried["whole body"] += 1
                if problem := _problem(page, f"POST {label}", response, content, errors):
                    problems.append(problem)
                elif response.status_code not in case.expected:
                    problems.append(f"{page.name} POST {label}: {response.status_code}, not one of {case.expected}")
        row = ROWS[page.name]
        objects = [arg for arg, kind in row.kinds.items() if kind not in VALUE_KINDS]
        values = [arg for arg, kind in row.kinds.items() if kind in VALUE_KINDS]
        for arg in objects + values:
            for label, bad in PATH_IDS.items():
                if arg in values and label != "invalid UTF-8":
                    continue  # a served name or a step may be any text: only one that is not text is wrong
                url = _url_with(page.name, world.a, arg, bad)
                method = "GET" if page.get else "POST"
                response, content, _ = visitor.send(method, url, content_type="application/x-www-form-urlencoded")
                tried["path"] += 1
                if problem := _problem(page, f"{method} {url} ({label} {arg})", response, content):
                    problems.append(problem)
                elif response.status_code != 404:
                    problems.append(f"{page.name} {method} {url} ({label} {arg}): {response.status_code}, not 404")

    print(f"\npages: {sum(tried.values())} bad inputs to {len(pages)} pages ({dict(tried)}); "
          f"answers {dict(sorted(visitor.statuses.items()))}; problems {len(problems)}")  # fmt: skip
    assert not problems, f"{len(problems)} bad inputs were not refused cleanly:\n" + "\n".join(problems)


def _baseline(form: Form, page: Page, world) -> dict[str, list[str]]:
    """The form as the page filled it, with what the permission matrix sends to make a row where it has a
    body for the page (a create form's required fields), so that a bad value reaches as deep as a good one."""
    body = form.body()
    if "POST" in ROWS[page.name].body:
        body |= {k: [str(v)] for k, v in ROWS[page.name].body["POST"](world.a).items()}
    return body


def _forms_by_url(page: Page, more: list[str]) -> dict[str, Form]:
    """The forms that post to the page, one per URL (the one with the most fields): the page's own URL, and
    the URLs of its other values (`more`: the wizard's steps)."""
    if not page.post:
        return {}
    chosen: dict[str, Form] = {}
    for form in page.forms:
        url = urlsplit(form.action).path
        if url != page.url and url not in more:
            continue  # the same form for another of A's objects (its adapter's edit page)
        if url not in chosen or len(form.fields) > len(chosen[url].fields):
            chosen[url] = form
    return chosen


def _url_with(name: str, side: MatrixSide, arg: str, raw: str) -> str:
    """`name` reversed with `side`'s objects, `arg` replaced by the raw text `raw`."""
    row = ROWS[name]
    for placeholder in ("987654321", "placeholder-value"):  # a number, or a text where the route takes one
        kwargs = {a: (placeholder if a == arg else side.value(kind)) for a, kind in row.kinds.items()}
        try:
            return reverse(name, kwargs=kwargs).replace(placeholder, raw)
        except NoReverseMatch:
            continue
    raise AssertionError(f"{name} cannot be reversed with {arg} replaced")


# The gateway ------------------------------------------------------------------------------------------

MODEL = "deployment-a-marker"  # A's deployment, which the upstream serves
CHAT = [{"role": "user", "content": "Hi"}]
CHAT_PATH, TEXT_PATH = "/v1/chat/completions", "/v1/completions"
OVER_CAP = 64 * 1024 + 1  # the `console` fixture's gateway takes bodies up to 64 KiB


def chat(**fields) -> bytes:
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 2, **fields}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def raw_chat(fragment: str) -> bytes:
    """A chat body with `fragment` (raw JSON text, e.g. `"temperature": NaN`) added."""
    return f'{{"model": "{MODEL}", "messages": {json.dumps(CHAT)}, "max_tokens": 2, {fragment}}}'.encode()


@dataclass(frozen=True)
class GatewayCase:
    body: bytes | object  # bytes, or an iterator of chunks (sent chunked)
    status: int
    code: str | None  # the error's code; None for an answer the upstream gave (forwarded)
    path: str = CHAT_PATH
    headers: dict = field(default_factory=dict)
    method: str = "POST"
    param: str | None = None  # the field the error names


def _case(body, status=400, code="invalid_type", **kw) -> GatewayCase:
    return GatewayCase(body, status, code, **kw)


def _chunks(total: int):
    yield b'{"model": "' + MODEL.encode() + b'", "x": "'
    for _ in range(total // 8192 + 1):
        yield b"x" * 8192
    yield b'"}'


GATEWAY_CASES: dict[str, GatewayCase] = {
    # Not JSON, or not a JSON object.
    "not JSON": _case(b"{not json", code="invalid_json"),
    "an empty body": _case(b"", code="invalid_json"),
    "truncated JSON": _case(chat()[:-5], code="invalid_json"),
    "JSON followed by garbage": _case(chat() + b" x", code="invalid_json"),
    "a JSON array": _case(b'[{"model": "m"}]', code="invalid_json"),
    "a JSON string": _case(b'"hello"', code="invalid_json"),
    "a JSON number": _case(b"3", code="invalid_json"),
    "JSON null": _case(b"null", code="invalid_json"),
    "arrays nested 30,000 deep": _case(
        b'{"model": "m", "messages": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", code="invalid_json"
    ),
    "objects nested 9,000 deep": _case(b'{"a":' * 9_000 + b"1" + b"}" * 9_000, code="invalid_json"),
    # Not UTF-8.
    "invalid UTF-8": _case(b"\xff\xfe\xfd", code="invalid_json"),
    "invalid UTF-8 inside a string": _case(
        raw_chat('"user": "\xff"').replace(b"\xc3\xbf", b"\xff"), code="invalid_json"
    ),
    "UTF-16": _case(chat().decode().encode("utf-16"), code="invalid_json"),
    "a lone surrogate in the model id": _case(raw_chat('"x": 1').replace(MODEL.encode(), b"\\ud800"), param="model"),
    "a NUL character in the model id": _case(raw_chat('"x": 1').replace(MODEL.encode(), b"a\\u0000b"), param="model"),
    "a model id of 10,000 characters": _case(chat(model="m" * 10_000), param="model"),
    # Numbers JSON does not have, and numbers too large for any model server.
    "NaN": _case(raw_chat('"temperature": NaN'), code="invalid_json"),
    "Infinity": _case(raw_chat('"top_p": Infinity'), code="invalid_json"),
    "-Infinity": _case(raw_chat('"frequency_penalty": -Infinity'), code="invalid_json"),
    "1e309 (infinite once read)": _case(raw_chat('"temperature": 1e309'), code="invalid_value"),
    "max_tokens 10**40": _case(chat(max_tokens=10**40), code="invalid_value", param="max_tokens"),
    "seed of 5,000 digits": _case(raw_chat('"seed": ' + "9" * 5000), code="invalid_value"),
    "max_tokens -1": _case(chat(max_tokens=-1), code="invalid_value", param="max_tokens"),
    "max_tokens 0": _case(chat(max_tokens=0), code="invalid_value", param="max_tokens"),
    "n 10**40": _case(chat(n=10**40), code="invalid_value", param="n"),
    "n 0": _case(chat(n=0), code="invalid_value", param="n"),
    "seed 2**64": _case(chat(seed=2**64), code="invalid_value", param="seed"),
    "temperature 1e308 (a number: the server's to judge)": _case(chat(temperature=1e308), 200, None),
    # Wrong types.
    "model missing": _case(chat(model=...), param="model"),
    "model a number": _case(chat(model=5), param="model"),
    "model null": _case(chat(model=None), param="model"),
    "model a list": _case(chat(model=[MODEL]), param="model"),
    "model an object": _case(chat(model={"id": MODEL}), param="model"),
    "model empty": _case(chat(model=""), param="model"),
    "model true": _case(chat(model=True), param="model"),
    "messages missing": _case(chat(messages=...), param="messages"),
    "messages a string": _case(chat(messages="Hi"), param="messages"),
    "messages empty": _case(chat(messages=[]), param="messages"),
    "messages a list of strings": _case(chat(messages=["Hi"]), param="messages"),
    "messages an object": _case(chat(messages={"role": "user"}), param="messages"),
    "messages null": _case(chat(messages=None), param="messages"),
    "max_tokens a string": _case(chat(max_tokens="5"), param="max_tokens"),
    "max_tokens a fraction": _case(chat(max_tokens=1.5), param="max_tokens"),
    "max_tokens true": _case(chat(max_tokens=True), param="max_tokens"),
    "max_tokens a list": _case(chat(max_tokens=[5]), param="max_tokens"),
    "temperature a string": _case(chat(temperature="hot"), param="temperature"),
    "temperature true": _case(chat(temperature=True), param="temperature"),
    "temperature an object": _case(chat(temperature={}), param="temperature"),
    "stream a string": _case(chat(stream="yes"), param="stream"),
    "stream 1": _case(chat(stream=1), param="stream"),
    "stream a list": _case(chat(stream=[True]), param="stream"),
    "n a string": _case(chat(n="2"), param="n"),
    "n a fraction": _case(chat(n=1.5), param="n"),
    "n false": _case(chat(n=False), param="n"),
    "stop a list of numbers": _case(chat(stop=[1]), param="stop"),
    "stream_options a string": _case(chat(stream=True, stream_options="x"), param="stream_options"),
    "prompt a number": _case(json.dumps({"model": MODEL, "prompt": 3}).encode(), path=TEXT_PATH, param="prompt"),
    "prompt missing": _case(json.dumps({"model": MODEL}).encode(), path=TEXT_PATH, param="prompt"),
    "prompt empty list": _case(json.dumps({"model": MODEL, "prompt": []}).encode(), path=TEXT_PATH, param="prompt"),
    # Unknown fields are vLLM's own extensions (top_k, min_p, guided_json, ...) as often as mistakes: the
    # gateway passes them on for the model server to judge (vLLM ignores those it does not know).
    "an unknown field (passed on)": _case(chat(zz_unknown={"a": [1]}), 200, None),
    # Size, content type, method.
    "a body over the cap": _case(chat(pad="x" * OVER_CAP), 413, "request_too_large"),
    "a chunked body over the cap": _case(_chunks(OVER_CAP), 413, "request_too_large"),
    "text/plain": _case(chat(), 415, "unsupported_media_type", headers={"Content-Type": "text/plain"}),
    "form data": _case(
        b"model=m&messages=x",
        415,
        "unsupported_media_type",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    "multipart": _case(
        chat(), 415, "unsupported_media_type", headers={"Content-Type": "multipart/form-data; boundary=x"}
    ),
    "application/json with a charset (accepted)": _case(
        chat(), 200, None, headers={"Content-Type": "application/json; charset=utf-8"}
    ),
    "GET on a completion endpoint": _case(b"", 405, "method_not_allowed", method="GET"),
    "PUT on a completion endpoint": _case(chat(), 405, "method_not_allowed", method="PUT"),
    "a model path that is not UTF-8": _case(b"", 404, "model_not_found", path="/v1/models/%FF%FE", method="GET"),
    "an unknown gateway path": _case(chat(), 404, "unknown_url", path="/v1/chat/completion"),
    "a key that is not UTF-8": _case(chat(), 401, "invalid_api_key", headers={"Authorization": b"Bearer \xff\xfe"}),
}


def _upstream_requests(upstream) -> int:
    return requests.get(upstream.url + "/stats", timeout=10).json()["requests"]


def _openai_error_problem(response: requests.Response, case: GatewayCase) -> str | None:
    try:
        payload = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"not OpenAI's error shape: {payload!r:.300}"
    if not (isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)):
        return f"an error without a message or type: {error}"
    if error["code"] != case.code:
        return f"code {error['code']!r}, not {case.code!r} ({error['message']})"
    if case.param is not None and error["param"] != case.param:
        return f"param {error['param']!r}, not {case.param!r} ({error['message']})"
    if not response.headers.get("content-type", "").startswith("application/json"):
        return f"content type {response.headers.get('content-type')}"
    return None


@pytest.mark.django_db(transaction=True)
def test_the_gateway_refuses_malformed_requests_in_openais_shape_and_forwards_none_of_them(console, upstream, tmp_path):
    world = build_matrix_world(tmp_path)
    deployment = Deployment.objects.get(pk=world.a.value("deployment"))
    Deployment.objects.filter(pk=deployment.pk).update(desired=Deployment.Desired.RUNNING)
    serve_from(deployment, upstream)
    changes.announce()  # the console drops what it holds of earlier tests' rows
    key = world.a.key_raw
    problems, outcomes = [], Counter()

    def send(case: GatewayCase) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}", **case.headers}
        return requests.request(case.method, console.url + case.path, data=case.body, headers=headers, timeout=15)

    # The route works: a good request reaches the upstream (so each refusal below is the gateway's own).
    before = _upstream_requests(upstream)
    ok = send(_case(chat(), 200, None))
    assert ok.status_code == 200 and ok.json()["choices"], ok.text
    assert _upstream_requests(upstream) == before + 1

    for label, case in GATEWAY_CASES.items():
        before = _upstream_requests(upstream)
        try:
            response = send(case)
        except requests.RequestException as exc:  # a hung request times out here
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        outcomes[response.status_code] += 1
        forwarded = _upstream_requests(upstream) - before
        if response.status_code != case.status:
            problems.append(f"{label}: {response.status_code}, not {case.status} ({response.text[:200]})")
        elif case.code is not None and (problem := _openai_error_problem(response, case)):
            problems.append(f"{label}: {problem}")
        elif forwarded != (1 if case.code is None else 0):
            problems.append(f"{label}: {forwarded} requests reached the upstream")

    # The usage of these requests is written by the console once a second: wait for it before the database
    # is flushed (the two at once deadlock on PostgreSQL). A record it could not write would stay.
    _, token = api_token_create(user=world.users["admin"], name="usage backlog")
    wait_for(
        lambda: "plugboard_gateway_usage_backlog 0\n"
        in requests.get(console.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text,
        timeout=30, what="the console to write the usage it holds",
    )  # fmt: skip
    print(f"\ngateway: {len(GATEWAY_CASES)} bad requests; answers {dict(sorted(outcomes.items()))}; "
          f"problems {len(problems)}")  # fmt: skip
    assert not problems, f"{len(problems)} bad requests were not refused cleanly:\n" + "\n".join(problems)


def test_the_web_process_refuses_a_page_body_over_the_cap_and_a_query_that_is_not_utf8(console):
    """Under ASGI, as deployed: the cap (config/middleware.py, RequestBodyLimit) answers 413 before Django
    reads a body, declared or chunked; a query that is not UTF-8, percent-encoded or raw, is a 400."""
    url = console.url + reverse("accounts:settings")
    declared = requests.post(url, data=b"name=" + b"x" * (2 * 1024 * 1024 + 1), timeout=30)
    chunked = requests.post(url, data=(b"x" * 65536 for _ in range(40)), timeout=30)
    for response in (declared, chunked):
        assert response.status_code == 413 and "limit" in response.json()["detail"], response.text[:200]
    for query in (INVALID_UTF8, "%C3%28"):
        response = requests.get(f"{url}?search={query}", timeout=30, allow_redirects=False)
        assert response.status_code == 400 and "UTF-8" in response.text, (query, response.status_code)


@pytest.mark.django_db(transaction=True)
def test_the_web_process_checks_multipart_form_data_behind_its_csrf_check(console):
    """As a browser posts, with the CSRF cookie and token (which Django's CSRF check reads from the form before
    any view): multipart form data is read and checked like urlencoded data, a sign-in form that is not UTF-8
    is a 400, and one that is UTF-8 is a sign-in attempt like any other."""
    session = requests.Session()
    url = console.url + reverse("login")
    assert session.get(url, timeout=30).status_code == 200
    token = session.cookies["csrftoken"]
    headers = {"Referer": url, "Content-Type": "multipart/form-data; boundary=zz"}
    for password, status in (("\udcff\udcfe", 400), ("wrong", 200)):
        body = _multipart({"csrfmiddlewaretoken": [token], "username": ["nobody"], "password": [password]})
        response = session.post(url, data=body, headers=headers, timeout=30, allow_redirects=False)
        assert response.status_code == status, (password, response.status_code, response.text[:300])
    assert "do not match" in response.text, "the form was read from the multipart body, and refused"


def test_the_web_process_answers_408_to_a_page_body_that_does_not_arrive_in_time(console):
    """A client that sends its headers and then drips (or withholds) the body gets a 408 once the console's
    body timeout has passed (5 s for this console), and holds nothing after."""
    url = urlsplit(console.url)
    began = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
        conn.sendall(
            f"POST {reverse('accounts:settings')} HTTP/1.1\r\nHost: console\r\n".encode()
            + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nname="
        )
        status, body = read_answer(conn)
    took = time.monotonic() - began
    assert status == "HTTP/1.1 408 Request Timeout", (status, body[:300])
    assert "did not arrive within 5 s" in body
    assert 4 < took < 15, f"answered after {took:.1f} s; the body timeout is 5 s"
    assert requests.get(console.url + "/healthz", timeout=10).status_code == 200
