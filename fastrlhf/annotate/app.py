"""The web app: the ranking page (/), the red-team page (/redteam) and the JSON API they call.

Request bodies are validated (pydantic, unknown fields refused); a forged or malformed submission gets a
4xx with a message and changes nothing. A judgement is answered {"saved": true} only once committed.
With a token, every request must carry it: the X-Token header, or the cookie set by opening /?token=T.
"""
import hmac
import secrets
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .. import data
from .db import Rejected

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024  # bytes of a request body; the largest valid one is well under this
COOKIE = "fastrlhf_annotate_token"
NAME = r"^[\w.@ +-]+$"
HEADERS = {  # model outputs are text: even a rendering bug could not run a script that is not ours
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

Annotator = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NAME)]
ResponseId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Note = Annotated[str, StringConstraints(max_length=2000)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RankSubmission(Body):
    annotator: Annotator
    item_id: int = Field(gt=0)
    verdict: Literal["ranked", "all_bad", "skip"]
    order: list[list[ResponseId]] = Field(default_factory=list, max_length=64)  # tie groups, best first
    note: Note = ""


class Flag(Body):
    category: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    note: Note = ""


class RedTeamPrompt(Body):
    annotator: Annotator
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=8000, pattern=r"\S")]


class RedTeamSubmission(Body):
    annotator: Annotator
    item_id: int = Field(gt=0)
    flags: dict[ResponseId, Flag] = Field(max_length=64)
    better: Annotated[str, StringConstraints(max_length=16000)] = ""
    note: Note = ""


def _error(status, message):
    return JSONResponse({"detail": message}, status_code=status, headers=HEADERS)


def create_app(store, *, k, categories, policies=None, sampler=None, token=None, per_item=1, redteam_k=2,
               max_prompt_len=256):
    """The app over `store`. policies: sampling.Policies (the red-team page needs them); sampler: the
    BackgroundSampler filling the ranking items, whose progress and failure the page shows, or None when
    the items come from elsewhere (`fastrlhf iterate --labeler human` adds each round's while the server
    runs): then a page with nothing left to rank keeps asking for new items."""
    app = FastAPI(title="fastrlhf annotate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.method not in ("GET", "HEAD"):
            length = request.headers.get("content-length", "")
            if not length.isdigit():
                return _error(411, "a request body needs a Content-Length")
            if int(length) > MAX_BODY:
                return _error(413, f"request body over {MAX_BODY} bytes")
        from_query = request.query_params.get("token")
        if token is not None:
            given = request.headers.get("x-token") or request.cookies.get(COOKIE) or from_query or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _error(401, "missing or wrong token: open the page as /?token=...")
        response = await call_next(request)
        response.headers.update(HEADERS)
        if token is not None and from_query:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(Rejected)
    async def rejected(request, error):
        return _error(error.status, str(error))

    @app.get("/", include_in_schema=False)
    def ranking_page():
        return FileResponse(STATIC / "rank.html")

    @app.get("/redteam", include_in_schema=False)
    def redteam_page():
        return FileResponse(STATIC / "redteam.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def sampling():
        return {"remaining": sampler.remaining if sampler else 0, "error": sampler.error if sampler else None,
                "external": sampler is None}

    @app.get("/api/config")
    def config():
        return {"k": k, "categories": list(categories), "redteam": policies is not None, "sampling": sampling()}

    @app.get("/api/next")
    def next_item(annotator: Annotated[str, Query(min_length=1, max_length=64, pattern=NAME)]):
        return {"item": store.next_item(annotator, per_item), "progress": store.progress(annotator),
                "sampling": sampling()}

    @app.post("/api/rank")
    def rank(body: RankSubmission):
        judgement = store.judge_ranking(body.annotator, body.item_id, body.verdict, body.order, body.note)
        return {"saved": True, "judgement": judgement}

    @app.get("/api/redteam/pending")
    def pending(annotator: Annotated[str, Query(min_length=1, max_length=64, pattern=NAME)]):
        return {"item": store.pending_redteam(annotator)}

    @app.post("/api/redteam/prompt")
    def redteam_prompt(body: RedTeamPrompt):
        if policies is None:
            raise Rejected(503, "this server has no policy loaded for red teaming")
        try:
            [ids] = data.prompts("the prompt", policies.tokenizer, max_prompt_len, rows=[{"prompt": body.prompt}])
        except data.DataError as error:
            raise Rejected(400, str(error)) from error
        [responses] = policies.respond([ids], redteam_k, seed=secrets.randbits(31))
        return {"item": store.add_redteam(body.prompt, responses, body.annotator)}

    @app.post("/api/redteam")
    def redteam(body: RedTeamSubmission):
        flags = {public_id: (flag.category, flag.note) for public_id, flag in body.flags.items()}
        judgement = store.judge_redteam(body.annotator, body.item_id, flags, body.better, body.note, categories)
        return {"saved": True, "judgement": judgement}

    return app
