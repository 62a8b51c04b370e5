#!/usr/bin/env python3
"""Golden chat renderings for mil's chat templates, from an independent implementation.

Renders a set of conversations through real Jinja chat templates with jinja2, set up as Hugging
Face transformers' apply_chat_template does (trim_blocks, lstrip_blocks, raise_exception,
bos_token / eos_token), and writes tests/text/golden/chat_templates.json: each template's source,
the family mil must detect, and for each conversation the expected text. The SmolLM2 template is
read from the teacher GGUF; the others are the templates their model cards ship.

  pip install jinja2 gguf==0.19.0
  python3 scripts/make_chat_golden.py
"""
import json
import pathlib

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from gguf import GGUFReader

ROOT = pathlib.Path(__file__).resolve().parent.parent
GGUF = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "tests/text/golden/chat_templates.json"

QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
         "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
          "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'assistant' %}\n"
          "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
          "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
          "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
          "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
          "{% endif %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}"
          "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
          "{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
          "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
          "{% endif %}{% endfor %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}"
           "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
           "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
           "{% endif %}{% endfor %}")

CONVERSATIONS = [
    ([{"role": "user", "content": "Hello"}], True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}], True),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "Tell me a joke about cats \U0001F431"}], True),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "Tell me a joke about cats \U0001F431"}], False),
    ([{"role": "user", "content": "  spaced out \n"}, {"role": "assistant", "content": " ok\n"}], False),
    ([{"role": "system", "content": "日本語で答えて"}, {"role": "user", "content": "東京はどこ？"}], True),
    ([{"role": "system", "content": ""}, {"role": "user", "content": "No system text"}], True),
    ([{"role": "user", "content": "\u3000full-width space\u00a0"},
      {"role": "assistant", "content": "\x0b\x0cvt ff\x1c\u2028"}, {"role": "user", "content": "\u200bzw"}],
     False),
    ([], True),
]


def render(source, messages, add_generation_prompt, bos, eos):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                          bos_token=bos, eos_token=eos)


def main():
    smollm2 = GGUFReader(str(GGUF)).fields["tokenizer.chat_template"]
    smollm2 = bytes(smollm2.parts[smollm2.data[0]]).decode("utf-8")
    templates = [("smollm2", "chatml", smollm2, "<|im_start|>", "<|im_end|>"),
                 ("qwen2", "chatml", QWEN2, "", "<|im_end|>"),
                 ("zephyr", "zephyr", ZEPHYR, "<s>", "</s>"),
                 ("llama3", "llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
                 ("llama2", "llama2", LLAMA2, "<s>", "</s>"),
                 ("mistral", "mistral", MISTRAL, "<s>", "</s>"),
                 # StableLM 2 Zephyr: the zephyr template with <|endoftext|> as EOS.
                 ("stablelm_zephyr", "zephyr", ZEPHYR, "<|endoftext|>", "<|endoftext|>")]
    out = []
    for name, family, source, bos, eos in templates:
        cases = []
        for messages, gen in CONVERSATIONS:
            try:
                text = render(source, messages, gen, bos, eos)
            except jinja2.exceptions.TemplateError as e:
                cases.append({"messages": messages, "add_generation_prompt": gen, "error": str(e)})
                continue
            cases.append({"messages": messages, "add_generation_prompt": gen, "text": text})
        out.append({"name": name, "family": family, "source": source, "bos_token": bos,
                    "eos_token": eos, "cases": cases})
    OUT.write_text(json.dumps({"source": "scripts/make_chat_golden.py (jinja2 " + jinja2.__version__ +
                                         ", apply_chat_template settings)", "templates": out},
                              ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {sum(len(t['cases']) for t in out)} renderings of {len(out)} templates to {OUT}")


if __name__ == "__main__":
    main()
