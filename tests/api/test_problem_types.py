"""Problem ``type`` URIs resolve: every slug the code can answer with has a page at ``/problems/<slug>``."""

from __future__ import annotations

import re

import pytest

from service.errors import PROBLEM_TYPES
from tests.server import REPO, Server

#: How the code names a problem type: ``slug="x"`` arguments, ``status, slug, title = 400, "x", …``
#: class attributes, ``("x", "Title")`` pairs in errors.py's table of HTTP errors, and the
#: middleware's ``_send_problem(…, "x")``.
_SLUG_PATTERNS = (
    re.compile(r'slug\s*=\s*"([a-z0-9-]+)"'),
    re.compile(r'slug\s*=\s*"([a-z0-9-]+)"\s+if\s+\w+\s+else\s+"([a-z0-9-]+)"'),
    re.compile(r'status, slug, title = \d{3}, "([a-z0-9-]+)"'),
    re.compile(r'\d{3}: \("([a-z0-9-]+)", "'),
)


def slugs_in_code() -> set[str]:
    found: set[str] = set()
    for path in (REPO / "service").rglob("*.py"):
        text = path.read_text()
        for pattern in _SLUG_PATTERNS:
            for match in pattern.finditer(text):
                found.update(g for g in match.groups() if g)
        # The middleware's refusals: _send_problem(send, status, title, detail, "slug").
        for call in re.finditer(r"_send_problem\((.*?)\)\n", text, re.DOTALL):
            found.update(re.findall(r'"([a-z0-9]+(?:-[a-z0-9]+)+)"', call.group(1)))
    return found


def test_the_scan_finds_the_slugs_it_must() -> None:
    # Guards the scan itself: one slug from each way the code names them.
    found = slugs_in_code()
    assert {"choose-plane", "invalid-options", "bad-request", "not-found", "payload-too-large",
            "timeout", "overloaded", "model-not-found"} <= found, found


def test_every_slug_in_the_code_has_a_problem_type() -> None:
    missing = slugs_in_code() - set(PROBLEM_TYPES)
    assert not missing, f"add these to service.errors.PROBLEM_TYPES: {sorted(missing)}"


@pytest.mark.parametrize("slug", sorted(PROBLEM_TYPES))
def test_each_problem_type_uri_resolves_to_its_page(server: Server, slug: str) -> None:
    r = server.client.get(f"/problems/{slug}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert PROBLEM_TYPES[slug].title.replace("'", "&#x27;") in r.text
    assert f"/problems/{slug}" in r.text


def test_a_problem_answer_links_to_a_page_that_exists(server: Server) -> None:
    problem = server.client.post("/segment", content=b"not an image", headers={"Content-Type": "image/png"})
    assert problem.status_code in (400, 415)
    kind = problem.json()["type"]
    page = server.client.get(kind)  # relative to the service, as RFC 9457 allows
    assert page.status_code == 200 and PROBLEM_TYPES[kind.rsplit("/", 1)[1]].title in page.text


def test_the_index_lists_every_type_and_an_unknown_type_is_a_404_problem(server: Server) -> None:
    index = server.client.get("/problems/")
    assert index.status_code == 200
    for slug in PROBLEM_TYPES:
        assert f'href="/problems/{slug}"' in index.text
    r = server.client.get("/problems/no-such-thing")
    assert r.status_code == 404 and r.json()["type"] == "/problems/not-found"


def test_pages_need_no_api_key(auth_server: Server) -> None:
    assert auth_server.client.get("/problems/unauthorized").status_code == 200
