"""Calls a translated route with an official SDK, as users' code would, and reports what came back.

Usage: llm_translation.py < scenario.json; prints one JSON document.
Scenario members: sdk ("openai" | "anthropic"), base (the SDK's base URL), key, model,
cases (names of the cases to run; all when absent), headers (extra request headers).
Each case reports what the SDK parsed (text, finish or stop reason, usage, tool calls), or for an
error the status, the SDK's exception class and the body.
"""

import json
import sys

import anthropic
import openai

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OPENAI_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                                "parameters": SCHEMA}}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "The weather in a city.", "input_schema": SCHEMA}


def failure(e):
    return {"status": e.status_code, "class": type(e).__name__, "body": e.body,
            "content_type": e.response.headers.get("content-type")}


def openai_cases(client, model, cases, headers):
    def create(extra_headers=None, **kwargs):
        return client.chat.completions.create(model=model, max_tokens=64,
                                              extra_headers={**(headers or {}), **(extra_headers or {})}, **kwargs)

    out = {}
    if "chat" in cases:
        r = create(messages=[{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Say hello."}])
        out["chat"] = {"object": r.object, "model": r.model, "text": r.choices[0].message.content,
                       "finish": r.choices[0].finish_reason, "usage": r.usage.model_dump()}
    if "stream" in cases:
        text, usage, finish, chunks = "", None, None, 0
        for chunk in create(messages=[{"role": "user", "content": "Say hello."}],
                            stream=True, stream_options={"include_usage": True}):
            chunks += 1
            if chunk.usage is not None:
                usage = chunk.usage.model_dump()
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        out["stream"] = {"text": text, "finish": finish, "usage": usage, "chunks": chunks}
        usage_chunks = sum(1 for chunk in create(messages=[{"role": "user", "content": "Say hello."}], stream=True)
                           if chunk.usage is not None)
        out["stream_without_usage"] = {"usage_chunks": usage_chunks}
    if "tools" in cases:
        r = create(messages=QUESTION, tools=[OPENAI_TOOL], tool_choice="auto")
        call = r.choices[0].message.tool_calls[0]
        out["tool_call"] = {"name": call.function.name, "arguments": json.loads(call.function.arguments),
                            "finish": r.choices[0].finish_reason, "content": r.choices[0].message.content}
        r = create(tools=[OPENAI_TOOL], messages=QUESTION + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
        out["tool_result"] = {"text": r.choices[0].message.content, "finish": r.choices[0].finish_reason}
        name, args, finish = None, "", None
        for chunk in create(messages=QUESTION, tools=[OPENAI_TOOL], stream=True):
            for c in chunk.choices:
                finish = c.finish_reason or finish
                for tc in c.delta.tool_calls or []:
                    name = (tc.function and tc.function.name) or name
                    args += (tc.function and tc.function.arguments) or ""
        out["stream_tool_call"] = {"name": name, "arguments": json.loads(args), "finish": finish}
    if "image" in cases:
        r = create(messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "https://images.example.com/cat.png"}}]}])
        out["image"] = {"text": r.choices[0].message.content}
    if "errors" in cases:
        try:
            create(messages=[{"role": "user", "content": "Say hello."}], extra_headers={"x-llm-fail": "429"})
        except openai.APIStatusError as e:
            out["backend_error"] = failure(e)
        try:
            create(messages=[{"role": "user", "content": "Say hello."}], logprobs=True)
        except openai.APIStatusError as e:
            out["unsupported"] = failure(e)
        try:
            create(messages=[{"role": "user", "content": "Say hello."}], extra_headers={"x-llm-garbage": "1"})
        except openai.APIStatusError as e:
            out["garbage"] = failure(e)
    if "no_fallback_can" in cases:
        try:
            create(messages=QUESTION, tools=[OPENAI_TOOL], parallel_tool_calls=False)
        except openai.APIStatusError as e:
            out["no_fallback_can"] = failure(e)
    return out


def anthropic_cases(client, model, cases, headers):
    def create(extra_headers=None, **kwargs):
        return client.messages.create(model=model, max_tokens=64,
                                      extra_headers={**(headers or {}), **(extra_headers or {})}, **kwargs)

    out = {}
    if "chat" in cases:
        r = create(system="Be brief.", messages=[{"role": "user", "content": "Say hello."}])
        out["chat"] = {"type": r.type, "model": r.model, "text": r.content[0].text, "stop": r.stop_reason,
                       "usage": r.usage.model_dump()}
    if "stream" in cases:
        with client.messages.stream(model=model, max_tokens=64, extra_headers=headers,
                                    messages=[{"role": "user", "content": "Say hello."}]) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        out["stream"] = {"text": text, "stop": final.stop_reason, "usage": final.usage.model_dump()}
    if "tools" in cases:
        r = create(messages=QUESTION, tools=[ANTHROPIC_TOOL])
        use = next(b for b in r.content if b.type == "tool_use")
        out["tool_call"] = {"name": use.name, "arguments": use.input, "stop": r.stop_reason}
        r = create(tools=[ANTHROPIC_TOOL], messages=QUESTION + [
            {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
        out["tool_result"] = {"text": r.content[0].text, "stop": r.stop_reason}
        with client.messages.stream(model=model, max_tokens=64, extra_headers=headers, messages=QUESTION,
                                    tools=[ANTHROPIC_TOOL]) as s:
            final = s.get_final_message()
        use = next(b for b in final.content if b.type == "tool_use")
        out["stream_tool_call"] = {"name": use.name, "arguments": use.input, "stop": final.stop_reason}
    if "errors" in cases:
        try:
            create(messages=[{"role": "user", "content": "Say hello."}], extra_headers={"x-llm-fail": "429"})
        except anthropic.APIStatusError as e:
            out["backend_error"] = failure(e)
        try:
            create(messages=[{"role": "user", "content": "Say hello."}], thinking={"type": "adaptive"})
        except anthropic.APIStatusError as e:
            out["unsupported"] = failure(e)
    return out


def main():
    s = json.load(sys.stdin)
    cases = s.get("cases") or ["chat", "stream", "tools", "image", "errors"]
    headers = s.get("headers") or None
    if s["sdk"] == "openai":
        client = openai.OpenAI(base_url=s["base"], api_key=s["key"], max_retries=0)
        out = openai_cases(client, s["model"], cases, headers)
    else:
        client = anthropic.Anthropic(base_url=s["base"], api_key=s["key"], max_retries=0)
        out = anthropic_cases(client, s["model"], cases, headers)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
