#!/usr/bin/env python3
"""llama.cpp on the CPU, measured the way mil-bench measures mil: the peer of mil's CPU numbers.

Drives llama.cpp through the low-level API of the llama-cpp-python binding (one model, one
context, llama_decode on batches of one sequence) and measures, with --threads threads:
  pp512      a 512-token prompt of random token ids (fixed seed) in one llama_decode call from an
             empty cache: tokens/s.
  tg128      128 greedy decode steps after an 8-token random prompt (prefilled untimed): tokens/s
             of the steps alone.
  chat       the chat-templated prompt (the model's own template with its default system message)
             "What is the capital of France? Explain its history.": prompt tokens/s from an empty
             cache, then 64 greedy decode steps (tokens/s of the steps alone).
Each runs once untimed, then --reps times: mean and sample standard deviation, as mil-bench and
llama.cpp's llama-bench report them. llama.cpp's own counters (llama_perf_context) are kept beside
the wall-clock numbers as a check.
  minimal    a fresh process (this script with --minimal) loads the model, reads the chat prompt
             "Hi" and generates 4 greedy tokens: its peak resident set (from wait4, as
             /usr/bin/time -f %M reports it), the model-load time and the time from the process's
             start to the first generated token. One untimed run, then --reps runs.
The model is memory-mapped (llama.cpp's default); the other context settings are llama.cpp's
defaults (f16 KV cache, flash attention "auto", micro-batch 512).

Kept out of CI: it needs llama.cpp built from source (minutes). scripts/llamacpp_cpu_peer.sh sets
up the virtual environment and runs this; the table goes to stdout and the record to --out (JSON).
"""
import time

T_SCRIPT = time.monotonic()  # before the heavy imports, so --minimal can tell their cost apart

import argparse  # noqa: E402
import ctypes  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import jinja2.sandbox  # noqa: E402
import llama_cpp as lc  # noqa: E402
import numpy as np  # noqa: E402

T_IMPORTED = time.monotonic()

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def shown_path(path):
    """The model's path as the record shows it: relative to the repository when inside it (a
    result file names no folder of the machine it ran on), else the file's name."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return Path(path).name
DEFAULT_OUT = ROOT / "out/llamacpp-cpu-peer.json"  # out/ is ignored by git
CHAT_QUESTION = "What is the capital of France? Explain its history."
MINIMAL_QUESTION = "Hi"
MINIMAL_NEW_TOKENS = 4
SHORT_PROMPT = 8     # random tokens prefilled before tgN, as mil-bench
TOKEN_SEED = 20240   # of the random prompts; mil-bench's seed (its generator differs)
N_CTX = 1024         # room for every test: 512, 8 + 128, ~40 + 64


# ---------------------------------------------------------------------------------------------
# llama.cpp through ctypes

_LOG_VERBOSE = False
_log_shown = True  # whether the last message was shown: a continuation (level 5) follows it


@lc.llama_log_callback
def _log(level, text, _user_data):
    # ggml's log levels here: 1 debug, 2 info, 3 warning, 4 error, 5 continuation of the last.
    # Warnings and errors go to stderr; the rest only with --verbose.
    global _log_shown
    if level != 5:
        _log_shown = _LOG_VERBOSE or level in (3, 4)
    if _log_shown:
        sys.stderr.write(text.decode("utf-8", "replace"))


class Engine:
    """One llama.cpp model with one context of a single sequence."""

    def __init__(self, model_path: Path, threads: int, n_batch: int):
        lc.llama_log_set(_log, ctypes.c_void_p(0))
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = lc.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {model_path}")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = N_CTX
        cparams.n_batch = n_batch  # a whole prompt goes in one llama_decode call
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = False  # keep llama.cpp's own timings, the cross-check
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise SystemExit("llama.cpp could not create a context")
        self.settings = {
            "n_ctx": lc.llama_n_ctx(self.ctx), "n_batch": lc.llama_n_batch(self.ctx),
            "n_ubatch": lc.llama_n_ubatch(self.ctx), "n_threads": lc.llama_n_threads(self.ctx),
            "n_threads_batch": lc.llama_n_threads_batch(self.ctx),
            "type_k": "f16", "type_v": "f16", "flash_attn": "auto", "mmap": True,
            "n_gpu_layers": 0,
        }
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.memory = lc.llama_get_memory(self.ctx)
        self._one = (lc.llama_token * 1)()

    def close(self):
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)

    # -- text --------------------------------------------------------------------------------

    def chat_prompt(self, question: str) -> str:
        """The question as one user turn through the model's own (Jinja) chat template."""
        template = lc.llama_model_chat_template(self.model, None)
        if not template:
            return question
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(template.decode()).render(
            messages=[{"role": "user", "content": question}], add_generation_prompt=True,
            bos_token=self.piece(lc.llama_vocab_bos(self.vocab)),
            eos_token=self.piece(lc.llama_vocab_eos(self.vocab)))

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (lc.llama_token * (len(data) + 8))()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, True)
        if n < 0:
            raise RuntimeError(f"tokenize: {-n} tokens do not fit")
        return list(buf[:n])

    def piece(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", "replace")

    def detokenize(self, tokens: list[int]) -> str:
        out = bytearray()
        buf = ctypes.create_string_buffer(64)
        for t in tokens:
            n = lc.llama_token_to_piece(self.vocab, t, buf, len(buf), 0, False)
            out += buf.raw[:max(n, 0)]
        return out.decode("utf-8", "replace")

    # -- compute -----------------------------------------------------------------------------

    def clear(self):
        lc.llama_memory_clear(self.memory, True)

    def decode(self, tokens: list[int]):
        """Appends the tokens to the sequence; logits of the last one only."""
        arr = (lc.llama_token * len(tokens))(*tokens)
        rc = lc.llama_decode(self.ctx, lc.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def step(self, token: int):
        self._one[0] = token
        rc = lc.llama_decode(self.ctx, lc.llama_batch_get_one(self._one, 1))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def argmax(self) -> int:
        logits = lc.llama_get_logits_ith(self.ctx, -1)
        return int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def reset_perf(self):
        lc.llama_perf_context_reset(self.ctx)

    def perf(self):
        """llama.cpp's counters since reset_perf: (prompt tokens, ms), (single-token steps, ms)."""
        p = lc.llama_perf_context(self.ctx)
        return (p.n_p_eval, p.t_p_eval_ms), (p.n_eval, p.t_eval_ms)


def rate(tokens: int, ms: float):
    return tokens / (ms / 1000.0) if ms > 0 else None


# ---------------------------------------------------------------------------------------------
# The timed runs. Each returns (wall-clock tokens/s, llama.cpp-counted tokens/s) per row.

def run_prompt(e: Engine, tokens: list[int]):
    e.clear()
    e.reset_perf()
    start = time.perf_counter()
    e.decode(tokens)
    e.argmax()  # the logits are read, as by any caller that goes on to generate
    wall = len(tokens) / (time.perf_counter() - start)
    (n, ms), _ = e.perf()
    return wall, rate(n, ms)


def run_generation(e: Engine, prompt: list[int], n_gen: int):
    """Untimed prefill, then n_gen timed greedy steps. Returns the speeds and the tokens."""
    e.clear()
    e.decode(prompt)
    nxt = e.argmax()
    out = [nxt]
    e.reset_perf()
    start = time.perf_counter()
    for _ in range(n_gen):
        e.step(nxt)
        nxt = e.argmax()
        out.append(nxt)
    wall = n_gen / (time.perf_counter() - start)
    _, (n, ms) = e.perf()
    return wall, rate(n, ms), out


class OtherLoad:
    """The share of the machine's CPU time that other processes used while the block ran: the
    busy time of all cores (/proc/stat) less this process's and its children's. Near 0 means the
    numbers are clean; 0.5 on 2 cores means another process held a whole core."""

    @staticmethod
    def _busy_s():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s():
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def __enter__(self):
        self.start = (time.monotonic(), self._busy_s(), self._own_s())
        return self

    def __exit__(self, *_):
        wall, busy, own = (now - then for now, then in
                           zip((time.monotonic(), self._busy_s(), self._own_s()), self.start))
        self.share = max(0.0, busy - own) / (wall * (os.cpu_count() or 1))


def measure(name: str, reps: int, once):
    """One untimed run, then reps timed ones; once() returns (wall tokens/s, llama.cpp tokens/s).
    Returns both lists and the other processes' share of the CPU during the timed runs."""
    print(f"[llamacpp_cpu_peer] {name}: warm-up + {reps} runs", file=sys.stderr, flush=True)
    once()
    walls, perfs = [], []
    with OtherLoad() as others:
        for _ in range(reps):
            wall, perf = once()
            walls.append(wall)
            perfs.append(perf)
    return walls, perfs, others.share


def summary(samples):
    samples = [s for s in samples if s is not None]
    if not samples:
        return None, None
    return statistics.fmean(samples), statistics.stdev(samples) if len(samples) > 1 else 0.0


def record(test, n_prompt, n_gen, prompt_kind, walls, perfs, others_share):
    mean, sd = summary(walls)
    perf_mean, perf_sd = summary(perfs)
    return {"test": test, "n_prompt": n_prompt, "n_gen": n_gen, "prompt": prompt_kind,
            "repetitions": len(walls), "tokens_per_second": mean, "tokens_per_second_sd": sd,
            "samples": walls, "llama_perf_tokens_per_second": perf_mean,
            "llama_perf_tokens_per_second_sd": perf_sd, "llama_perf_samples": perfs,
            "other_processes_cpu_share": others_share}


def benchmark(e: Engine, args):
    rng = np.random.default_rng(TOKEN_SEED)
    tests = []

    pp = rng.integers(0, e.n_vocab, args.n_prompt).tolist()
    walls, perfs, others = measure(f"pp{args.n_prompt}", args.reps, lambda: run_prompt(e, pp))
    tests.append(record(f"pp{args.n_prompt}", args.n_prompt, 0, "random", walls, perfs, others))

    short = rng.integers(0, e.n_vocab, SHORT_PROMPT).tolist()
    walls, perfs, others = measure(f"tg{args.n_gen}", args.reps,
                           lambda: run_generation(e, short, args.n_gen)[:2])
    tests.append(record(f"tg{args.n_gen}", SHORT_PROMPT, args.n_gen, "random",
                        walls, perfs, others))

    chat_text = e.chat_prompt(CHAT_QUESTION)
    chat = e.tokenize(chat_text)
    walls, perfs, others = measure(f"pp{len(chat)} chat", args.reps, lambda: run_prompt(e, chat))
    tests.append(record(f"pp{len(chat)} chat", len(chat), 0, "chat", walls, perfs, others))

    answers = []

    def chat_generation():
        wall, perf, out = run_generation(e, chat, args.chat_gen)
        answers.append(out)
        return wall, perf

    walls, perfs, others = measure(f"tg{args.chat_gen} chat", args.reps, chat_generation)
    tests.append(record(f"tg{args.chat_gen} chat", len(chat), args.chat_gen, "chat",
                        walls, perfs, others))
    chat_info = {"question": CHAT_QUESTION, "prompt_text": chat_text, "prompt_tokens": len(chat),
                 "answer": e.detokenize(answers[-1]),
                 "answers_identical": all(a == answers[0] for a in answers)}
    return tests, chat_info


# ---------------------------------------------------------------------------------------------
# --minimal: a whole short chat in a fresh process, timed from the process's start

def process_start(t0_arg):
    """CLOCK_MONOTONIC at this process's start: the parent's stamp just before it spawned this
    process, else the kernel's start time of the process (10 ms ticks)."""
    if t0_arg is not None:
        return t0_arg
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    return time.monotonic() - since_start


def minimal(args):
    t0 = process_start(args.t0)
    baseline_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_load = time.monotonic()
    e = Engine(args.model, args.threads, 512)
    t_loaded = time.monotonic()
    prompt = e.tokenize(e.chat_prompt(MINIMAL_QUESTION))
    e.decode(prompt)
    out = [e.argmax()]
    t_first = time.monotonic()
    for _ in range(MINIMAL_NEW_TOKENS - 1):
        e.step(out[-1])
        out.append(e.argmax())
    t_done = time.monotonic()
    print(json.dumps({
        "prompt_tokens": len(prompt), "generated_tokens": len(out), "text": e.detokenize(out),
        "startup_s": T_SCRIPT - t0, "import_s": T_IMPORTED - T_SCRIPT, "load_s": t_loaded - t_load,
        "prompt_and_first_token_s": t_first - t_loaded, "ttft_s": t_first - t0,
        "total_s": t_done - t0, "rss_before_load_kb": baseline_rss_kb,
    }))
    e.close()


def run_minimal_process(args):
    """This script with --minimal in a fresh process; its report and its peak RSS (KB)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--minimal", "--model", str(args.model),
           "--threads", str(args.threads)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd + ["--t0", repr(t0)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"--minimal run failed with {proc.returncode}")
    report = json.loads(out.strip().splitlines()[-1])
    report["peak_rss_kb"] = usage.ru_maxrss  # the child's alone, as /usr/bin/time -f %M
    return report


def minimal_runs(args):
    print(f"[llamacpp_cpu_peer] minimal (fresh process): warm-up + {args.reps} runs",
          file=sys.stderr, flush=True)
    run_minimal_process(args)  # warms the page cache and Python's bytecode cache
    with OtherLoad() as others:
        runs = [run_minimal_process(args) for _ in range(args.reps)]
    result = {"question": MINIMAL_QUESTION, "new_tokens": MINIMAL_NEW_TOKENS,
              "prompt_tokens": runs[0]["prompt_tokens"], "text": runs[0]["text"], "runs": runs,
              "other_processes_cpu_share": others.share}
    for key in ("peak_rss_kb", "rss_before_load_kb", "startup_s", "import_s", "load_s",
                "prompt_and_first_token_s", "ttft_s", "total_s"):
        mean, sd = summary([r[key] for r in runs])
        result[key] = mean
        result[key + "_sd"] = sd
    return result


# ---------------------------------------------------------------------------------------------
# Context and report

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def llama_cpp_commit():
    """ggml's build commit (llama.cpp's tree), which libggml-base reports; None if it does not."""
    for lib in sorted((Path(lc.__file__).parent / "lib").glob("libggml-base.*")):
        try:
            fn = ctypes.CDLL(str(lib)).ggml_commit
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_char_p
        return fn().decode()
    return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def table(tests, mini) -> str:
    lines = ["| test | tokens/s | llama.cpp's counters, tokens/s | others' CPU share |",
             "| --- | ---: | ---: | ---: |"]
    for t in tests:
        perf = t["llama_perf_tokens_per_second"]
        perf_text = f"{perf:.2f} ± {t['llama_perf_tokens_per_second_sd']:.2f}" if perf else "-"
        speed = f"{t['tokens_per_second']:.2f} ± {t['tokens_per_second_sd']:.2f}"
        lines.append(f"| {t['test']} | {speed} | {perf_text} | "
                     f"{t['other_processes_cpu_share']:.0%} |")
    if not mini:
        return "\n".join(lines)

    def seconds(key):
        return f"{mini[key]:.3f} ± {mini[key + '_sd']:.3f} s"

    lines += [
        "", f"minimal run: a fresh process, chat prompt \"{mini['question']}\" "
        f"({mini['prompt_tokens']} tokens), {mini['new_tokens']} tokens generated; "
        f"others' CPU share {mini['other_processes_cpu_share']:.0%}", "",
        "| measure | value |", "| --- | ---: |",
        f"| peak RSS | {mini['peak_rss_kb']:.0f} ± {mini['peak_rss_kb_sd']:.0f} KB "
        f"({mini['peak_rss_kb'] / 1024:.1f} MiB) |",
        f"| RSS before the model load (Python + imports) | {mini['rss_before_load_kb']:.0f} KB |",
        f"| interpreter start | {seconds('startup_s')} |",
        f"| imports (numpy, jinja2, llama_cpp) | {seconds('import_s')} |",
        f"| model load (model + context) | {seconds('load_s')} |",
        f"| prompt + first token after the load | {seconds('prompt_and_first_token_s')} |",
        f"| time to first token from process start | {seconds('ttft_s')} |",
    ]
    return "\n".join(lines)


def load_build_info(path):
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text())
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF file")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per test, after one warm-up")
    ap.add_argument("--n-prompt", type=int, default=512, help="ppN: prompt length")
    ap.add_argument("--n-gen", type=int, default=128, help="tgN: tokens generated")
    ap.add_argument("--chat-gen", type=int, default=64, help="chat test: tokens generated")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON record")
    ap.add_argument("--skip-minimal", action="store_true", help="no fresh-process minimal run")
    ap.add_argument("--build-info", help="JSON written by llamacpp_cpu_peer.sh about the build")
    ap.add_argument("--verbose", action="store_true", help="llama.cpp's info log on stderr")
    ap.add_argument("--minimal", action="store_true", help=argparse.SUPPRESS)  # the child run
    ap.add_argument("--t0", type=float, help=argparse.SUPPRESS)  # the parent's CLOCK_MONOTONIC
    args = ap.parse_args()
    global _LOG_VERBOSE
    _LOG_VERBOSE = args.verbose
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.n_prompt > N_CTX or SHORT_PROMPT + args.n_gen >= N_CTX or args.chat_gen > N_CTX // 2:
        ap.error(f"the tests must fit the context of {N_CTX} tokens")

    if args.minimal:
        minimal(args)
        return

    load_before = os.getloadavg()  # other work on the machine skews every number: recorded
    if load_before[0] > 0.5:
        print(f"[llamacpp_cpu_peer] warning: load average {load_before[0]:.2f} before the run; "
              "other work on the CPU skews the numbers", file=sys.stderr)
    mini = None if args.skip_minimal else minimal_runs(args)
    e = Engine(args.model, args.threads, max(512, args.n_prompt))
    tests, chat = benchmark(e, args)
    desc = ctypes.create_string_buffer(256)
    lc.llama_model_desc(e.model, desc, len(desc))
    result = {
        "peer": "llama.cpp via llama-cpp-python (low-level API), CPU",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "llama_cpp_python": metadata.version("llama-cpp-python"),
        "llama_cpp_commit": llama_cpp_commit(),
        "build": load_build_info(args.build_info),
        "system_info": lc.llama_print_system_info().decode().strip(),
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
        "python": platform.python_version(), "kernel": platform.release(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "model": {"path": shown_path(args.model), "bytes": args.model.stat().st_size,
                  "sha256": sha256(args.model), "desc": desc.value.decode(),
                  "params": lc.llama_model_n_params(e.model)},
        "settings": e.settings, "token_seed": TOKEN_SEED,
        "tests": tests, "chat": chat, "minimal": mini,
    }
    e.close()

    print(table(tests, mini))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
