"""The scripted model server, started for real and called through the real `openai` client."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from countersign.activities.context import fold_note, summary_request
from countersign.activities.transcript import Fold
from countersign.demo.model_server import DEFAULT_SCRIPTS_DIR, NO_MATCH_REPLY, create_app

REFUND_TASK = "Refund order A-1001: the teapot arrived broken."
LOOKUP_RESULT = {"order_id": "A-1001", "customer_id": "C-100", "captured_cents": 4200}
CITED = "refund-policy.md#damaged-or-defective-items:1"
SEARCH_RESULT = {"passages": [{"ref": CITED, "text": "An item that arrived broken ..."}]}


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("model-scripts")
    for f in DEFAULT_SCRIPTS_DIR.glob("*.json"):
        shutil.copy(f, target / f.name)
    return target


@pytest.fixture(scope="module")
def base_url(scripts: Path) -> Iterator[str]:
    config = uvicorn.Config(create_app(scripts), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "model server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(5)


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="scripted", max_retries=0) as c:
        yield c


def user(text: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": text},
    ]


def assistant(message: Any) -> dict[str, Any]:
    """The reply as the runtime feeds it back."""
    out: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [c.model_dump(mode="json") for c in message.tool_calls]
    return out


def tool_result(call_id: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"result": result})}


async def complete(client: openai.AsyncOpenAI, messages: list[dict[str, Any]]) -> Any:
    return await client.chat.completions.create(model="gpt-test", messages=messages)


async def test_refund_script_plays_lookup_then_refund_and_note_then_final(
    client: openai.AsyncOpenAI,
) -> None:
    messages = user(REFUND_TASK)
    first = await complete(client, messages)
    assert first.model == "scripted:refund"
    assert first.system_fingerprint == "countersign-scripted"
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    lookup, search = choice.message.tool_calls
    assert lookup.type == "function"
    assert lookup.function.name == "orders.lookup"
    # Each call's reason comes as its own `call_reason` argument, and as a content line.
    assert json.loads(lookup.function.arguments) == {
        "order_id": "A-1001",
        "call_reason": "I need the captured amount",
    }
    assert lookup.id.startswith("call_") and len(lookup.id) == len("call_") + 8
    assert search.function.name == "knowledge.search"
    assert json.loads(search.function.arguments) == {
        "query": "refund the teapot arrived broken",
        "limit": 3,
        "call_reason": "I need the refund policy that applies",
    }
    assert choice.message.content == (
        "Let me look up order A-1001.\norders.lookup: I need the captured amount\n"
        "knowledge.search: I need the refund policy that applies"
    )

    messages += [
        assistant(choice.message),
        tool_result(lookup.id, LOOKUP_RESULT),
        tool_result(search.id, SEARCH_RESULT),
    ]
    second = (await complete(client, messages)).choices[0]
    assert second.finish_reason == "tool_calls"
    refund, note = second.message.tool_calls
    assert refund.function.name == "payments.refund"
    assert json.loads(refund.function.arguments) == {
        "order_id": "A-1001",
        "amount_cents": 4200,
        "reason": "Customer reports: the teapot arrived broken",
        "call_reason": "The customer reports: the teapot arrived broken; refunding the full "
        "captured amount, as the refund policy says "
        "[refund-policy.md#damaged-or-defective-items:1].",
    }
    assert note.function.name == "crm.add_note"
    assert json.loads(note.function.arguments) == {
        "customer_id": "C-100",
        "text": "Refunded order A-1001 in full. Customer reports: the teapot arrived broken.",
        "call_reason": "Keep the customer record up to date",
    }
    assert refund.id != note.id
    assert second.message.content.splitlines() == [
        "payments.refund: The customer reports: the teapot arrived broken; "
        f"refunding the full captured amount, as the refund policy says [{CITED}].",
        "crm.add_note: Keep the customer record up to date",
    ]

    messages += [
        assistant(second.message),
        tool_result(refund.id, {"refund_id": "re_1", "status": "succeeded"}),
        tool_result(note.id, {"note_id": "note_1"}),
    ]
    third = (await complete(client, messages)).choices[0]
    assert third.finish_reason == "stop"
    assert third.message.tool_calls is None
    assert third.message.content == "Refunded order A-1001 and noted it on the customer record."


async def test_update_contact_script_changes_the_phone(client: openai.AsyncOpenAI) -> None:
    messages = user("Update customer C-100: new phone number.")
    first = (await complete(client, messages)).choices[0].message
    assert first.tool_calls[0].function.name == "customers.lookup"
    messages += [assistant(first), tool_result(first.tool_calls[0].id, {"customer_id": "C-100"})]
    second = (await complete(client, messages)).choices[0].message
    [update] = second.tool_calls
    assert update.function.name == "crm.update_contact"
    assert json.loads(update.function.arguments) == {
        "customer_id": "C-100",
        "fields": {"phone": "+44 20 7946 0000"},
        "call_reason": "The customer asked for their phone number to be updated.",
    }


async def test_same_conversation_gets_same_tool_call_ids(client: openai.AsyncOpenAI) -> None:
    one, two = [await complete(client, user(REFUND_TASK)) for _ in range(2)]
    assert one.choices[0].message.tool_calls[0].id == two.choices[0].message.tool_calls[0].id
    assert one.id != two.id


async def test_a_missing_result_is_reported_in_the_reply_not_a_crash(
    client: openai.AsyncOpenAI,
) -> None:
    messages = user(REFUND_TASK)
    first = (await complete(client, messages)).choices[0].message
    denied = {"error": "denied by the guard: scope", "rule_ids": ["r1"]}
    messages += [
        assistant(first),
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": json.dumps(denied)},
        tool_result(first.tool_calls[1].id, SEARCH_RESULT),
    ]
    choice = (await complete(client, messages)).choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content.startswith(
        "Script 'refund' turn 2 needs {result:orders.lookup.captured_cents} but"
    )


async def test_a_task_no_script_matches_gets_an_honest_reply(client: openai.AsyncOpenAI) -> None:
    response = await complete(client, user("Write me a poem about teapots."))
    assert response.model == "scripted:none"
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.content == NO_MATCH_REPLY


async def test_past_the_last_turn_the_script_says_so(client: openai.AsyncOpenAI) -> None:
    messages = user(REFUND_TASK) + [{"role": "assistant", "content": "done"}] * 3
    choice = (await complete(client, messages)).choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == "Script 'refund' has no more turns."


async def test_hallucinated_tool_and_malformed_arguments_are_delivered_as_scripted(
    client: openai.AsyncOpenAI,
) -> None:
    # The tools offered do not include the hallucinated one; the server does not filter.
    offered = [{"type": "function", "function": {"name": "payments.refund", "parameters": {}}}]
    messages = user("Please hallucinate a payment method.")
    first = await client.chat.completions.create(model="m", messages=messages, tools=offered)
    [wire] = first.choices[0].message.tool_calls
    assert wire.function.name == "payments.wire_transfer"

    messages += [assistant(first.choices[0].message), tool_result(wire.id, {})]
    second = await client.chat.completions.create(model="m", messages=messages, tools=offered)
    [refund] = second.choices[0].message.tool_calls
    assert refund.function.name == "payments.refund"
    assert refund.function.arguments == '{"order_id": "A-1001", "amount_cents": "lots"'


async def test_a_script_dropped_in_at_run_time_is_picked_up(
    client: openai.AsyncOpenAI, scripts: Path
) -> None:
    assert (await complete(client, user("Frobnicate widget W-42"))).model == "scripted:none"
    script = {
        "name": "frobnicate",
        "match": r"(?i)frobnicate widget (?P<widget>W-\d+)",
        "turns": [
            {
                "say": "Frobnicating {widget}.",
                "tool_calls": [
                    {
                        "name": "widgets.frobnicate",
                        "arguments": {"widget": "{widget}", "level": 3},
                        "reason": "Asked to",
                        "reason_in_arguments": True,
                    }
                ],
            }
        ],
    }
    tmp = scripts / "frobnicate.json.tmp"
    tmp.write_text(json.dumps(script))
    os.replace(tmp, scripts / "frobnicate.json")
    response = await complete(client, user("Frobnicate widget W-42"))
    assert response.model == "scripted:frobnicate"
    message = response.choices[0].message
    assert message.content == "Frobnicating W-42."
    assert json.loads(message.tool_calls[0].function.arguments) == {
        "widget": "W-42",
        "level": 3,
        "reason": "Asked to",
    }


async def test_streaming_is_refused_with_an_openai_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="m", messages=user(REFUND_TASK), stream=True)
    assert caught.value.status_code == 400
    assert caught.value.param == "stream"
    assert caught.value.type == "invalid_request_error"


async def test_a_request_without_messages_is_refused_naming_the_field(base_url: str) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{base_url}/chat/completions", json={"model": "m"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "messages"
    assert "messages" in error["message"]
    assert error["type"] == "invalid_request_error"


async def test_models_lists_the_scripts(client: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in client.models.list()]
    shipped = [
        "scripted:fabricated-citation",
        "scripted:hallucinate",
        "scripted:refund",
        "scripted:update-contact",
    ]
    assert [i for i in ids if i in shipped] == shipped  # file-name order, the order tried


async def test_usage_is_reported_as_positive_estimates(client: openai.AsyncOpenAI) -> None:
    response = await complete(client, user(REFUND_TASK))
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_a_script_can_misbehave_like_a_broken_model(
    client: openai.AsyncOpenAI, scripts: Path
) -> None:
    (scripts / "misbehave.json").write_text(
        json.dumps(
            {
                "name": "misbehave",
                "match": "(?i)misbehave",
                "turns": [
                    {
                        "say": "cut",
                        "finish_reason": "length",
                        "pad_bytes": 5000,
                        "tool_calls": [
                            {"name": "orders.lookup", "arguments": {"order_id": "A-1"}, "id": "c"},
                            {"name": "orders.lookup", "arguments": {"order_id": "A-2"}, "id": "c"},
                        ],
                    }
                ],
            }
        )
    )
    reply = await client.chat.completions.create(
        model="any",
        messages=user("Please misbehave."),  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert len(choice.message.content or "") > 5000
    assert [c.id for c in choice.message.tool_calls or []] == ["c", "c"]


async def test_a_context_window_note_counts_the_replies_it_stands_for(
    client: openai.AsyncOpenAI, base_url: str
) -> None:
    """The note activities/context.py puts in place of folded turns moves the script on."""
    note = fold_note(Fold(covers_seq=5, replies=2, summary="Looked up and refunded A-1001."))
    response = await client.chat.completions.create(
        model="gpt-4.1-mini", messages=[*user(REFUND_TASK), note]
    )
    # The refund script's third turn: the final report, as if its two replies were shown.
    assert not response.choices[0].message.tool_calls
    assert response.choices[0].message.content.startswith("Refunded order A-1001")
    async with httpx.AsyncClient() as http:
        listed = await http.get(base_url.removesuffix("/v1") + "/_requests")
    seen = listed.json()["requests"][-1]
    assert seen["roles"] == ["system", "user", "user"] and seen["task"] == REFUND_TASK


async def test_a_summary_request_gets_a_running_tally(client: openai.AsyncOpenAI) -> None:
    folded = [
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": "{}"},
                }
                for i, name in enumerate(["orders.lookup", "orders.lookup", "crm.add_note"])
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": json.dumps(LOOKUP_RESULT)},
    ]
    previous = "Scripted summary (not a language model). Tool calls so far: orders.lookup x3."
    response = await client.chat.completions.create(
        model="gpt-4.1-mini", messages=summary_request(previous, folded, first_seq=8)
    )
    assert response.model == "scripted:summarizer"
    assert response.choices[0].message.content == (
        "Scripted summary (not a language model). "
        "Tool calls so far: crm.add_note x1, orders.lookup x5. "
        f"Latest result: {json.dumps(LOOKUP_RESULT)}"
    )
