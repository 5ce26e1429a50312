"""``GET /problems/{slug}``: the page a problem's ``type`` URI points to (RFC 9457 §3.1.1).

A short, self-contained HTML page per problem type from :data:`service.errors.PROBLEM_TYPES`:
what it means and what to do. No API key: it documents the API, like ``/docs``.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from service.errors import PROBLEM_TYPES, ProblemError, problem_responses, problem_type

router = APIRouter(tags=["problems"])

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}}
code{{background:#f3f3f3;padding:0 .2em}}</style></head>
<body><h1>{title}</h1>
<p>HTTP {status} · problem type <code>{type}</code></p>
<h2>What it means</h2><p>{means}</p>
<h2>What to do</h2><p>{todo}</p>
<p>The response's <code>detail</code> says what was wrong with that request; quote its
<code>request_id</code> when you report a problem. <a href="/problems/">All problem types</a> ·
<a href="/docs">API documentation</a></p></body></html>
"""

_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Problem types</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}}</style>
</head><body><h1>Problem types</h1>
<p>Errors are RFC 9457 problem details (<code>application/problem+json</code>); their
<code>type</code> is one of these.</p><ul>{items}</ul></body></html>
"""


@router.get("/problems/", response_class=HTMLResponse, summary="Every problem type the service answers with")
def problem_index() -> HTMLResponse:
    items = "".join(
        f'<li><a href="{problem_type(slug)}">{escape(p.title)}</a> ({p.status})</li>'
        for slug, p in sorted(PROBLEM_TYPES.items(), key=lambda item: (item[1].status, item[0]))
    )
    return HTMLResponse(_INDEX.format(items=items))


@router.get(
    "/problems/{slug}",
    response_class=HTMLResponse,
    summary="What a problem type means and what to do about it",
    responses=problem_responses(404),
)
def problem_page(slug: str) -> HTMLResponse:
    problem = PROBLEM_TYPES.get(slug)
    if problem is None:
        raise ProblemError(
            f"no problem type {slug!r}; GET /problems/ lists them", status=404, slug="not-found",
            title="Not found",
        )
    return HTMLResponse(
        _PAGE.format(
            title=escape(problem.title),
            status=problem.status,
            type=escape(problem_type(slug)),
            means=escape(problem.means),
            todo=escape(problem.todo),
        )
    )
