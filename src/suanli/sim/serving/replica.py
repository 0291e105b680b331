"""One LLM replica as a continuous-batching engine, scheduled the way vLLM's v1
scheduler does it, so queueing, batching and KV pressure shape the latencies.

Every step has a token budget (``max_num_batched_tokens``: vLLM's default with chunked
prefill is 8192; a simulated service sizes it to its TPOT SLO, as Sarathi-Serve does,
`suanli.perf.batching.slo_token_budget`). Sequences already decoding take one token
each; then prompts in progress take chunks; then waiting requests are admitted first
come, first served, while the budget, ``max_num_seqs`` (256) and free KV cache allow. A
prompt finishes prefilling in the step that samples its first token. When the cache
cannot hold one more token per decoding sequence, the newest sequence is preempted and
recomputed later (vLLM's default, RECOMPUTE): its generated tokens join its prompt.

The KV cache is counted in tokens; PagedAttention wastes under 4% of it in its last
blocks (Kwon et al., SOSP'23, Sec. 6), which is left out.

Stretches of pure decoding (nothing waiting, no prompt half done) advance many steps
at once in closed form: step times grow linearly with the tokens cached, so the time
of ``k`` steps is a quadratic in ``k``. An hour of trace then costs events, not steps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from suanli.perf.batching import MAX_SEQS, TOKEN_BUDGET, StepTime


@dataclass(slots=True)
class Seq:
    """A request on its way through a replica; times are simulated seconds."""

    rid: int
    arrival_s: float
    prompt: int  # tokens to prefill (after a preemption: prompt and generated so far)
    output: int  # tokens still to generate (after a preemption: what is left)
    asked: int = 0  # tokens the client asked for (TPOT divides by these)
    prefilled: int = 0
    generated: int = 0
    first_s: float = -1.0
    done_s: float = -1.0
    preemptions: int = 0
    kind: str = ""  # the kind of replica that served it
    #: the share of its replica's SLO batch it takes (`suanli.autoscale.routing`)
    weight: float = 0.0

    @property
    def cached(self) -> int:
        return self.prefilled + self.generated


class Replica:
    def __init__(
        self,
        kind: str,
        steps: StepTime,
        *,
        start_s: float,
        ready_s: float,
        budget: int = TOKEN_BUDGET,
        max_seqs: int = MAX_SEQS,
        serial_prefill: bool = False,
    ) -> None:
        """``serial_prefill``: serve_lm's scheduler instead of vLLM's: each step prefills
        the newly admitted prompts one pass each, whole, then decodes every active
        sequence (the newcomers too) in one pass; a sequence holds a slot of the cache
        for its whole length, so nothing is preempted."""
        self.kind, self.steps = kind, steps
        self.start_s, self.ready_s, self.clock = start_s, ready_s, ready_s
        self.stop_s: float | None = None
        self.budget, self.max_seqs = budget, max_seqs
        self.kv_cap = steps.kv_capacity_tokens()
        self.serial_prefill = serial_prefill
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.used = 0  # KV tokens held
        self.partial = 0  # running sequences whose prompt is not all prefilled
        self.draining = False
        self.reclaim_end_s: float | None = None  # spot: reclaimed, gone at this time
        self.finished: list[Seq] = []
        self.tokens_out = 0
        self.fill = 0.0  # the weights of the requests in it (`suanli.autoscale.routing`)

    # --- what the router and autoscaler read --------------------------------------------
    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running)

    def kv_use(self) -> float:
        return self.used / self.kv_cap if self.kv_cap else 1.0

    def fits(self, prompt: int, output: int) -> bool:
        return prompt + output <= self.kv_cap

    def submit(self, seq: Seq, weight: float = 0.0) -> None:
        seq.kind, seq.weight = self.kind, weight
        self.fill += weight
        self.waiting.append(seq)

    # --- the engine ---------------------------------------------------------------------
    def run_until(self, t_end: float) -> None:
        """Step until the clock reaches ``t_end`` (a step under way finishes past it)."""
        while self.clock < t_end:
            if not self.running and not self.waiting:
                self.clock = t_end
                return
            if not self.waiting and not self.partial:
                self._decode_stretch(t_end)
            else:
                self._step()

    def _preempt_for(self, need: int) -> None:
        """Evict the newest sequences until each decoding one can add a token."""
        while self.running and self.used + need > self.kv_cap:
            need -= self._evict_newest()

    def _evict_newest(self) -> int:
        """Back to the head of the queue, to be recomputed; 1 if it was decoding."""
        v = self.running.pop()
        self.used -= v.cached
        decoding = v.prefilled >= v.prompt
        if not decoding:
            self.partial -= 1
        v.prompt, v.prefilled = v.prompt + v.generated, 0
        v.output, v.generated = v.output - v.generated, 0
        v.preemptions += 1
        self.waiting.appendleft(v)
        return int(decoding)

    def evacuate(self) -> list[Seq]:
        """The replica is gone (a spot reclaim's notice ran out): its unfinished requests,
        each left as a preemption leaves it (generated tokens join the prompt), for the
        router to send elsewhere."""
        while self.running:
            self._evict_newest()
        out = list(self.waiting)
        self.waiting.clear()
        self.used = self.partial = 0
        self.fill = 0.0
        return out

    def _step_serial(self) -> None:
        start, pre = self.clock, 0.0
        while self.waiting and len(self.running) < self.max_seqs:
            s = self.waiting.popleft()
            pre += self.steps.step_s(0, 0.0, s.prompt)
            s.prefilled, s.generated = s.prompt, 1
            if s.first_s < 0:
                s.first_s = start + pre
            self.running.append(s)
            self.tokens_out += 1
            self.used += s.cached
        decoding = [s for s in self.running if s.generated < s.output]
        # serve_lm's decode attends over the batch's longest context for every row (a
        # dense cache, masked), not each row's own: what it reads is rows x the longest
        ctx = len(decoding) * max((s.cached for s in decoding), default=0)
        self.clock += pre + (self.steps.decode_s(len(decoding), ctx) if decoding else 0.0)
        for s in decoding:
            s.generated += 1
        self.used += len(decoding)
        self.tokens_out += len(decoding)
        self._retire()

    def _step(self) -> None:
        if self.serial_prefill:
            self._step_serial()
            return
        decoding = sum(1 for s in self.running if s.prefilled >= s.prompt)
        self._preempt_for(decoding)
        decoding = sum(1 for s in self.running if s.prefilled >= s.prompt)
        budget = self.budget - decoding
        free = self.kv_cap - self.used - decoding
        chunks: list[tuple[Seq, int]] = []
        for s in self.running:
            if s.prefilled < s.prompt and budget > 0 and free > 0:
                c = min(s.prompt - s.prefilled, budget, free)
                chunks.append((s, c))
                budget -= c
                free -= c
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            s = self.waiting[0]
            c = min(s.prompt, budget)
            if c > free:
                break
            self.waiting.popleft()
            self.running.append(s)
            self.partial += 1
            chunks.append((s, c))
            budget -= c
            free -= c
        ctx = sum(s.cached for s in self.running if s.prefilled >= s.prompt)
        dt = self.steps.step_s(decoding, ctx, sum(c for _, c in chunks))
        if dt <= 0:  # half-done prompts hold the whole cache: the newest starts over
            if self.running:
                self._evict_newest()
            else:  # a prompt the cache can never hold (the router checks; belt and braces)
                self.fill -= self.waiting.popleft().weight
            return
        self.clock += dt
        for s in self.running:
            if s.prefilled >= s.prompt:
                s.generated += 1
                self.used += 1
        for s, c in chunks:
            s.prefilled += c
            self.used += c
            if s.prefilled >= s.prompt:  # the step that ends the prompt samples a token
                self.partial -= 1
                s.generated += 1
                self.used += 1
                if s.first_s < 0:
                    s.first_s = self.clock
        self.tokens_out += decoding + sum(1 for s, _ in chunks if s.prefilled >= s.prompt)
        self._retire()

    def _decode_stretch(self, t_end: float) -> None:
        """``k`` decode steps at once: batch fixed, each step's context one token longer
        per sequence; stops at the first finish, a full cache, or the step crossing t_end."""
        b = len(self.running)
        kmax = min(
            min(s.output - s.generated for s in self.running), (self.kv_cap - self.used) // b
        )
        if kmax < 1:
            self._step()  # the cache is full: the single step preempts
            return
        fixed = self.steps.decode_s(b, 0.0)
        a = self.steps.attn_s_per_token
        ctx0 = sum(s.cached for s in self.running)

        def total(k: int) -> float:
            return k * fixed + a * (k * ctx0 + b * k * (k - 1) / 2)

        k = kmax
        if self.clock + total(kmax) > t_end:  # the smallest k whose last step crosses t_end
            lo, hi = 1, kmax
            while lo < hi:
                mid = (lo + hi) // 2
                if self.clock + total(mid) >= t_end:
                    hi = mid
                else:
                    lo = mid + 1
            k = lo
        self.clock += total(k)
        for s in self.running:
            s.generated += k
        self.used += b * k
        self.tokens_out += b * k
        self._retire()

    def _retire(self) -> None:
        done = [s for s in self.running if s.prefilled >= s.prompt and s.generated >= s.output]
        if not done:
            return
        for s in done:
            s.done_s = self.clock
            self.used -= s.cached
            self.fill -= s.weight
            self.finished.append(s)
        self.running = [s for s in self.running if s.done_s < 0]
        if not self.running and not self.waiting:
            self.fill = 0.0  # nothing in it: no rounding left over either
