"""Calls Tollgate the way users' code calls a provider: with the official openai and anthropic SDKs.

Usage: llm_sdk.py '<JSON scenario>'; prints one JSON document with the outcome of each call.
Scenario members: sdk ("openai" | "anthropic"), base (the proxy's URL), key, model, max_tokens,
stream (bool), calls (how many), headers (extra request headers: the test backend's knobs),
cut_after (streamed: stop reading after this many events and close the stream).
"""

import json
import sys

import anthropic
import openai


def openai_call(client, s):
    kwargs = dict(
        model=s["model"],
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=s["max_tokens"],
        extra_headers=s.get("headers") or None,
    )
    if not s.get("stream"):
        r = client.chat.completions.create(**kwargs)
        return {"status": 200, "text": r.choices[0].message.content,
                "usage": r.usage.model_dump() if r.usage else None}
    stream = client.chat.completions.create(stream=True, **kwargs)
    text, usage_chunks, events = "", 0, 0
    for chunk in stream:
        events += 1
        if chunk.usage is not None:
            usage_chunks += 1
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if s.get("cut_after") and events >= s["cut_after"]:
            stream.close()
            break
    return {"status": 200, "text": text, "usage_chunks": usage_chunks, "events": events}


def anthropic_call(client, s):
    kwargs = dict(
        model=s["model"],
        max_tokens=s["max_tokens"],
        messages=[{"role": "user", "content": "Say hello."}],
        extra_headers=s.get("headers") or None,
    )
    if not s.get("stream"):
        r = client.messages.create(**kwargs)
        return {"status": 200, "text": r.content[0].text, "usage": r.usage.model_dump()}
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    return {"status": 200, "text": text, "usage": final.usage.model_dump()}


def main():
    s = json.loads(sys.argv[1])
    if s["sdk"] == "openai":
        client = openai.OpenAI(base_url=s["base"] + "/v1", api_key=s["key"], max_retries=0)
        call, error = openai_call, openai.APIStatusError
    else:
        client = anthropic.Anthropic(base_url=s["base"], api_key=s["key"], max_retries=0)
        call, error = anthropic_call, anthropic.APIStatusError
    outcomes = []
    for _ in range(s.get("calls", 1)):
        try:
            outcomes.append(call(client, s))
        except error as e:
            outcomes.append({"status": e.status_code, "problem": e.body,
                             "content_type": e.response.headers.get("content-type")})
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main()
