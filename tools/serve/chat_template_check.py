#!/usr/bin/env python3
"""ferry's chat templates (src/io/chat.c) against transformers.

For each template ferry knows (deepseek3, chatml, ferry) and a few
conversations, renders the conversation twice: with ferry's C renderer
(`test_chat --render`) and with transformers' apply_chat_template on the
template's real Jinja text, and requires the same string. The Jinja texts
are checked too: DeepSeek-V3's and ChatML's against the copies below (from
huggingface.co/deepseek-ai/DeepSeek-V3 tokenizer_config.json and the
transformers chat-templating guide), ferry's against the one ferry's
Hugging Face export writes (src/interop/hf_meta.c).

usage: chat_template_check.py --test-chat PATH --source DIR --ferry PATH --work DIR
exit 0 pass, 1 fail, 77 skip (no transformers)."""
import argparse
import json
import os
import re
import subprocess
import sys

DEEPSEEK3 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + "
    "'```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = {  # bos, eos as the models' tokenizers name them
    "deepseek3": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "ferry": ("<|bos|>", "<|eos|>"),
}
CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "s1"}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Tell a joke.\nA short one."}],
    [{"role": "system", "content": "first"}, {"role": "system", "content": "second"},
     {"role": "user", "content": "über naïve 日本語 <|eos|> {{ not jinja }}"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "  spaced  "}, {"role": "user", "content": "x"}],
]


def strip_space(s):
    return re.sub(r"\s+", "", s)


def ferry_export_template(source):
    """The chat_template string literal of src/interop/hf_meta.c, decoded."""
    text = open(os.path.join(source, "src/interop/hf_meta.c"), encoding="utf-8").read()
    m = re.search(r"static const char chat_template\[\] =(.*?);", text, re.S)
    if not m:
        raise SystemExit("FAIL: no chat_template in src/interop/hf_meta.c")
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))
    return "".join(bytes(p, "utf-8").decode("unicode_escape") for p in parts)


def hf_render(template, bos, eos, messages):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
                                  bos_token=bos, eos_token=eos)
    tok.chat_template = template
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-chat", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--ferry")
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("SKIP: transformers is not installed")
        return 77
    os.makedirs(a.work, exist_ok=True)
    expected = {"deepseek3": DEEPSEEK3, "chatml": CHATML, "ferry": ferry_export_template(a.source)}
    fails = 0
    for name, jinja in expected.items():
        mine = subprocess.run([a.test_chat, "--jinja", name], capture_output=True, text=True, check=True).stdout
        if strip_space(mine) != strip_space(jinja):
            print(f"FAIL: ferry's {name} Jinja text differs from the reference")
            fails += 1
        bos, eos = SPECIALS[name]
        for i, conv in enumerate(CONVERSATIONS):
            path = os.path.join(a.work, f"conv{i}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(conv, f, ensure_ascii=False)
            got = subprocess.run([a.test_chat, "--render", name, bos, eos, path], capture_output=True, check=True)
            got = got.stdout.decode("utf-8")
            want = hf_render(jinja, bos, eos, conv)
            if got != want:
                print(f"FAIL: {name}, conversation {i}:\n  ferry:        {got!r}\n  transformers: {want!r}")
                fails += 1
            else:
                print(f"ok: {name}, conversation {i} ({len(want)} characters)")
    if fails:
        print(f"{fails} mismatches")
        return 1
    print("all renderings equal transformers' apply_chat_template")
    return 0


if __name__ == "__main__":
    sys.exit(main())
