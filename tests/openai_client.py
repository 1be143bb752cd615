"""A real OpenAI client against `rapid-chat serve`, for tests/server.rs.

    openai_client.py both URL QUESTION [KEY]   one answer whole, then streamed; prints JSON
    openai_client.py hang URL QUESTION [KEY]   streams, prints "first" at the first text, waits
"""
import json
import sys
import time

from openai import OpenAI

mode, url, question = sys.argv[1], sys.argv[2], sys.argv[3]
key = sys.argv[4] if len(sys.argv) > 4 else "no-key"
client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)
messages = [{"role": "user", "content": question}]

if mode == "both":
    whole = client.chat.completions.create(model="any", messages=messages, temperature=0)
    stream = client.chat.completions.create(
        model="any",
        messages=messages,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, last, chunks = "", None, None, 0
    for c in stream:
        chunks += 1
        if c.choices and c.choices[0].delta.content:
            text += c.choices[0].delta.content
        if c.choices and c.choices[0].finish_reason:
            last = {"finish_reason": c.choices[0].finish_reason, **(c.model_extra or {})}
        if c.usage:
            usage = c.usage.model_dump()
    print(
        json.dumps(
            {
                "whole": whole.choices[0].message.content,
                "whole_finish": whole.choices[0].finish_reason,
                "whole_usage": whole.usage.model_dump(),
                "whole_extra": whole.model_extra,
                "streamed": text,
                "stream_chunks": chunks,
                "stream_last": last,
                "stream_usage": usage,
            }
        )
    )
elif mode == "hang":
    stream = client.chat.completions.create(
        model="any",
        messages=messages,
        temperature=0,
        max_tokens=256,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    for c in stream:
        if c.choices and c.choices[0].delta.content:
            print("first", flush=True)
            time.sleep(600)
else:
    sys.exit(f"unknown mode {mode}")
