r"""Scripted model server: an OpenAI-compatible Chat Completions endpoint that replays scripts.

    python -m countersign.demo.model_server --port 8102            # serves demo/scripts/*.json
    AsyncOpenAI(base_url="http://127.0.0.1:8102/v1", api_key="scripted", max_retries=0)

This is not a language model and says so: every reply names its script in `model`
("scripted:refund", or "scripted:none" when nothing matches), carries
`system_fingerprint: "countersign-scripted"`, and a task no script matches gets a reply
explaining how to point Countersign at a real model. The `usage` token counts are estimates
(ceil(characters / 4) over the request's messages and tools as JSON, and over the reply), not
the output of a tokenizer.

A script is one JSON file in the scripts folder:

    {"name": "refund", "description": "...",
     "match": "(?i)refund\\b.*?\\b(?P<order_id>[A-Z]-\\d{4})",
     "turns": [{"say": "Let me look up order {order_id}.",
                "tool_calls": [{"name": "orders.lookup", "arguments": {"order_id": "{order_id}"},
                                "reason": "I need the captured amount"}]},
               {"say": "Refunded order {order_id}."}]}

- The first user message is searched with each script's `match`, scripts tried in file-name
  order; the named groups become template variables.
- The turn played is the number of assistant messages already in the request, plus the
  number of earlier replies a context-window note says are not shown (a user message starting
  "[Countersign: your N earlier replies", see activities/context.py). A `{result:...}`
  placeholder sees only the tool results in the request, so not those folded away.
- `say` becomes the message content; each call's `reason` is sent as the call's own
  `call_reason` argument (the per-call reason every tool schema offers) and appended to the
  content as a line "<tool>: <reason>", unless the call sets `"reason_in_arguments": true`,
  which sends it as an argument named `reason` instead.
- Strings may hold `{var}` (a match group) and `{result:<tool>.<dotted.path>}` (from the latest
  tool result answering a call to <tool>; inside its top-level "result" object when there is
  one). A string that is exactly one placeholder keeps the value's JSON type.
- `"raw_arguments": "..."` on a call sends that exact string, malformed or not.
- Misbehaving replies, as a broken or compromised model sends them: `"id": "..."` on a call
  sets its tool-call id (two calls may share one); `"finish_reason": "length"` (or
  `"content_filter"`) on a turn sets the reply's finish reason; `"pad_bytes": N` on a turn
  appends N characters to its content.
- The `tools` offered in the request are not checked: a scripted model may propose a tool that
  does not exist, as a real one may, and the runtime has to catch it.

A request whose system message holds the marker `[countersign:summarize]` asks for a running
summary (activities/context.py): the reply, from model `scripted:summarizer`, tallies the tool
calls named in the request (`-> calls <tool>` lines, and the `<tool> xN` tallies of an earlier
summary) and quotes the latest tool result's first 300 characters, deterministically.

`GET /_requests` lists the latest requests (at most 2,000): the script (model name), the
number of messages and their roles, the estimated prompt tokens and the task's first 200
characters, so a test can check what the model was actually sent.

Scripts are re-read whenever a file in the folder is added, removed or modified.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["DEFAULT_SCRIPTS_DIR", "NO_MATCH_REPLY", "ScriptError", "create_app", "main"]

DEFAULT_SCRIPTS_DIR = Path(__file__).parent / "scripts"
FINGERPRINT = "countersign-scripted"
NO_MATCH_REPLY = (
    "I am Countersign's scripted offline model and no script matches this task. "
    "Set OPENAI_BASE_URL/OPENAI_API_KEY to use a real model."
)
# Only these brace forms are templates, so other braces in a script's text stay literal.
PLACEHOLDER = re.compile(r"\{(result:[^{}\s]+|[A-Za-z_][A-Za-z0-9_]*)\}")


class ScriptError(Exception):
    """A script file is missing, unreadable or invalid."""


# --- script files -------------------------------------------------------------------------


class ScriptCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None
    reason_in_arguments: bool = False
    raw_arguments: str | None = None
    id: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ScriptCall:
        if self.raw_arguments is not None and (self.arguments or self.reason_in_arguments):
            raise ValueError("raw_arguments is sent verbatim; drop arguments/reason_in_arguments")
        if self.reason_in_arguments:
            if self.reason is None:
                raise ValueError("reason_in_arguments needs a reason")
            if "reason" in self.arguments:
                raise ValueError("reason_in_arguments would overwrite the 'reason' argument")
        return self


class ScriptTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    say: str | None = None
    tool_calls: list[ScriptCall] = Field(default_factory=list)
    finish_reason: str | None = None
    pad_bytes: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _not_empty(self) -> ScriptTurn:
        if self.say is None and not self.tool_calls:
            raise ValueError("a turn needs 'say', 'tool_calls' or both")
        return self


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    match: re.Pattern[str]
    turns: list[ScriptTurn] = Field(min_length=1)


@dataclass
class ScriptLibrary:
    """The scripts in a folder, re-read when any file there is added, removed or changed."""

    directory: Path
    _signature: tuple[tuple[str, int, int], ...] | None = None
    _scripts: tuple[Script, ...] = ()

    def scripts(self) -> tuple[Script, ...]:
        if not self.directory.is_dir():
            raise ScriptError(f"scripts folder {self.directory} does not exist")
        files = sorted(self.directory.glob("*.json"))
        signature = tuple((f.name, *_stat(f)) for f in files)
        if signature != self._signature:
            self._scripts = tuple(_load(f) for f in files)
            names = [s.name for s in self._scripts]
            if duplicates := sorted({n for n in names if names.count(n) > 1}):
                raise ScriptError(f"{self.directory}: script names used twice: {duplicates}")
            self._signature = signature
        return self._scripts


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _load(path: Path) -> Script:
    try:
        return Script.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as e:
        raise ScriptError(f"script {path} is invalid: {e}") from e


# --- playing a turn -----------------------------------------------------------------------


class TurnError(Exception):
    """The script cannot play this turn; the reply says why instead of the server crashing."""


@dataclass
class Conversation:
    """What a script can see of the request: the match groups and the tool results so far."""

    variables: dict[str, str | None]
    messages: list[dict[str, Any]]

    def value(self, placeholder: str) -> Any:
        if placeholder.startswith("result:"):
            return self._result(placeholder.removeprefix("result:"))
        value = self.variables.get(placeholder)
        if value is None:
            known = ", ".join(k for k, v in self.variables.items() if v is not None) or "none"
            raise TurnError(
                f"needs {{{placeholder}}} but the task text did not provide it "
                f"(variables from the match: {known})"
            )
        return value

    def _result(self, reference: str) -> Any:
        called = {}  # tool call id -> tool name, from the assistant messages
        for m in self.messages:
            if m.get("role") == "assistant":
                for call in m.get("tool_calls") or []:
                    function = call.get("function") or {}
                    called[call.get("id")] = function.get("name")
        parts = reference.split(".")
        # Tool names contain dots, so try the longest tool name a call in the conversation used.
        for cut in range(len(parts) - 1, 0, -1):
            tool, path = ".".join(parts[:cut]), parts[cut:]
            for m in reversed(self.messages):
                if m.get("role") == "tool" and called.get(m.get("tool_call_id")) == tool:
                    return _lookup(reference, tool, _text(m.get("content")), path)
        raise TurnError(
            f"needs {{result:{reference}}} but no tool result in the conversation answers a call "
            f"to a tool named by a prefix of {reference!r}"
        )


def _lookup(reference: str, tool: str, content: str, path: list[str]) -> Any:
    try:
        document = json.loads(content)
    except json.JSONDecodeError:
        raise TurnError(
            f"needs {{result:{reference}}} but the {tool} result is not JSON: {content[:200]}"
        ) from None
    roots = [document]
    if isinstance(document, dict) and isinstance(document.get("result"), dict):
        roots.insert(0, document["result"])
    for root in roots:
        found, value = _walk(root, path)
        if found:
            return value
    has = ", ".join(roots[0]) if isinstance(roots[0], dict) else type(roots[0]).__name__
    raise TurnError(
        f"needs {{result:{reference}}} but the {tool} result has no {'.'.join(path)!r} "
        f"(it has: {has or 'nothing'})"
    )


def _walk(value: Any, path: list[str]) -> tuple[bool, Any]:
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return False, None
    return True, value


def _render(template: Any, conversation: Conversation) -> Any:
    if isinstance(template, dict):
        return {k: _render(v, conversation) for k, v in template.items()}
    if isinstance(template, list):
        return [_render(v, conversation) for v in template]
    if not isinstance(template, str):
        return template
    whole = PLACEHOLDER.fullmatch(template)
    if whole:
        return conversation.value(whole.group(1))

    def text(m: re.Match[str]) -> str:
        value = conversation.value(m.group(1))
        return value if isinstance(value, str) else json.dumps(value)

    return PLACEHOLDER.sub(text, template)


def _render_text(template: str, conversation: Conversation) -> str:
    value = _render(template, conversation)
    return value if isinstance(value, str) else json.dumps(value)


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def call_id(script: str, turn: int, index: int) -> str:
    """Deterministic, so replaying a conversation gives the same ids."""
    return "call_" + hashlib.sha256(f"{script}\n{turn}\n{index}".encode()).hexdigest()[:8]


def _play(script: Script, turn_index: int, conversation: Conversation) -> dict[str, Any]:
    """The assistant message for one turn of a script."""
    turn = script.turns[turn_index]
    lines = [_render_text(turn.say, conversation)] if turn.say is not None else []
    tool_calls = []
    for i, call in enumerate(turn.tool_calls):
        reason = _render_text(call.reason, conversation) if call.reason is not None else None
        if call.raw_arguments is not None:
            arguments = call.raw_arguments
        else:
            rendered = _render(call.arguments, conversation)
            if call.reason_in_arguments:
                rendered["reason"] = reason
            elif reason is not None:
                rendered["call_reason"] = reason  # the per-call reason the tool schema offers
            arguments = json.dumps(rendered)
        if reason is not None and not call.reason_in_arguments:
            lines.append(f"{call.name}: {reason}")
        tool_calls.append(
            {
                "id": call.id or call_id(script.name, turn_index, i),
                "type": "function",
                "function": {"name": call.name, "arguments": arguments},
            }
        )
    if turn.pad_bytes:
        lines.append("x" * turn.pad_bytes)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "\n".join(lines) if lines else None,
    }
    if turn.finish_reason:
        message["finish_reason"] = turn.finish_reason  # taken out again by the HTTP handler
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


SUMMARIZE_MARKER = "[countersign:summarize]"  # activities/context.py sends it
FOLDED_REPLIES = re.compile(r"^\[Countersign: your (\d+) earlier replies")
CALLED = re.compile(r"^\s*-> calls (\S+)", re.MULTILINE)
TALLY = re.compile(r"(\S+) x(\d+)\b")
RESULT_LINE = re.compile(r"^tool result \[[^\]]*\]: (.*)$", re.MULTILINE)


def _task(messages: list[dict[str, Any]]) -> str:
    return next((_text(m.get("content")) for m in messages if m.get("role") == "user"), "")


def _summary(messages: list[dict[str, Any]]) -> str:
    """A deterministic running summary: how often each tool was called, so far."""
    text = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "user")
    tally: dict[str, int] = {}
    for name, count in TALLY.findall(text):
        tally[name] = tally.get(name, 0) + int(count)
    for name in CALLED.findall(text):
        tally[name] = tally.get(name, 0) + 1
    calls = ", ".join(f"{name} x{n}" for name, n in sorted(tally.items())) or "none"
    summary = f"Scripted summary (not a language model). Tool calls so far: {calls}."
    results = RESULT_LINE.findall(text)
    if results:  # quoted as a real summary would, values and all
        summary += f" Latest result: {results[-1][:300]}"
    return summary


def reply(
    scripts: tuple[Script, ...], messages: list[dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    """Pick the script for the task and play the next turn: (model name, assistant message)."""
    system = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
    if SUMMARIZE_MARKER in system:
        return "scripted:summarizer", {"role": "assistant", "content": _summary(messages)}
    task = _task(messages)
    for script in scripts:
        found = script.match.search(task)
        if found:
            break
    else:
        return "scripted:none", {"role": "assistant", "content": NO_MATCH_REPLY}
    model = f"scripted:{script.name}"
    turn_index = sum(1 for m in messages if m.get("role") == "assistant")
    for m in messages:
        folded = FOLDED_REPLIES.match(_text(m.get("content"))) if m.get("role") == "user" else None
        if folded:
            turn_index += int(folded.group(1))
    if turn_index >= len(script.turns):
        return model, {"role": "assistant", "content": f"Script '{script.name}' has no more turns."}
    conversation = Conversation(found.groupdict(), messages)
    try:
        return model, _play(script, turn_index, conversation)
    except TurnError as e:
        content = f"Script '{script.name}' turn {turn_index + 1} {e}"
        return model, {"role": "assistant", "content": content}


# --- HTTP ---------------------------------------------------------------------------------


def _error(status: int, message: str, param: str | None = None, **kw: Any) -> JSONResponse:
    body = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return JSONResponse({"error": body | kw}, status_code=status)


def _estimate_tokens(value: Any) -> int:
    """An estimate, not a tokenizer: ceil(characters of the JSON / 4)."""
    return math.ceil(len(json.dumps(value, ensure_ascii=False)) / 4)


def create_app(scripts_dir: str | Path, latency_ms: int = 0) -> Starlette:
    """The scripted model server as an ASGI app; fails now if the scripts are invalid."""
    library = ScriptLibrary(Path(scripts_dir))
    library.scripts()
    requests: deque[dict[str, Any]] = deque(maxlen=2000)
    # The server's own time handling chat completions (benchmarks subtract it: /_stats).
    handled = {"requests": 0, "seconds": 0.0}

    def scripts_or_error() -> tuple[Script, ...] | JSONResponse:
        try:
            return library.scripts()
        except ScriptError as e:
            return _error(500, str(e), type="server_error", code="invalid_script")

    async def chat_completions(request: Request) -> JSONResponse:
        began = time.perf_counter()
        try:
            return await _chat_completions(request)
        finally:
            handled["requests"] += 1
            handled["seconds"] += time.perf_counter() - began

    async def _chat_completions(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        for field in ("model", "messages"):
            if field not in body:
                return _error(400, f"Missing required parameter: '{field}'.", field)
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return _error(400, "'messages' must be a list of message objects.", "messages")
        if body.get("stream"):
            return _error(
                400,
                "The scripted model server does not stream; send the request with stream=false.",
                "stream",
            )
        scripts = scripts_or_error()
        if isinstance(scripts, JSONResponse):
            return scripts
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        model, message = reply(scripts, messages)
        finish_reason = message.pop("finish_reason", None) or (
            "tool_calls" if message.get("tool_calls") else "stop"
        )
        prompt_tokens = _estimate_tokens({"messages": messages, "tools": body.get("tools")})
        completion_tokens = max(1, _estimate_tokens(message))
        requests.append(
            {
                "model": model,
                "messages": len(messages),
                "roles": [m.get("role") for m in messages],
                "prompt_tokens": prompt_tokens,
                "task": _task(messages)[:200],
            }
        )
        return JSONResponse(
            {
                "id": "chatcmpl-scripted-" + uuid.uuid4().hex[:24],
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": finish_reason,
                        "message": message,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def models(request: Request) -> JSONResponse:
        scripts = scripts_or_error()
        if isinstance(scripts, JSONResponse):
            return scripts
        data = [
            {"id": f"scripted:{s.name}", "object": "model", "created": 0, "owned_by": FINGERPRINT}
            for s in scripts
        ]
        return JSONResponse({"object": "list", "data": data})

    async def recent_requests(request: Request) -> JSONResponse:
        return JSONResponse({"requests": list(requests)})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(handled)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "scripted": True})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/_requests", recent_requests, methods=["GET"]),
            Route("/_stats", stats, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m countersign.demo.model_server",
        description="Serve scripted conversations behind an OpenAI-compatible API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument(
        "--scripts",
        type=Path,
        default=DEFAULT_SCRIPTS_DIR,
        help="folder of script JSON files (default: %(default)s)",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        help="wait this long before each completion, like a real model",
    )
    args = parser.parse_args(argv)
    try:
        app = create_app(args.scripts, latency_ms=args.latency_ms)
    except ScriptError as e:
        parser.exit(2, f"model server: {e}\n")

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    _AnnouncingServer(config).run()


class _AnnouncingServer(uvicorn.Server):
    """Prints the URL once the socket is bound, so whoever reads the output can connect."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]  # the real one for --port 0
            print(f"model server listening on http://{self.config.host}:{port}/v1", flush=True)


if __name__ == "__main__":
    main()
