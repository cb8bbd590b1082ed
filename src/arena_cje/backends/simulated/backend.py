"""``SimulatedBackend``: the default, fully offline backend with a known ground truth.

See ``world.py`` for the token-level model and ``features.py`` for how prompts and system prompts
are read.  Conventions chosen here:

* ``PolicySpec.model`` is ignored (one world model); ``top_p`` must be 1.
* A response is at most ``max_tokens`` words.  EOT can be sampled after 0..max_tokens-1 words;
  a response of exactly ``max_tokens`` words was cut: its ``Generation`` has ``error=None``,
  ``n_tokens == max_tokens``, ``usage["truncated"] == 1`` and its log-prob has no EOT term.
  Teacher forcing mirrors this: a text of exactly ``max_tokens`` words is scored without EOT, a
  shorter one with EOT, a longer one cannot be produced (``logprob=None`` with an error).
* Tokenisation is ``str.split()``: texts that differ only in whitespace get the same score (the
  model itself only ever emits single spaces).
* The judge ignores ``JudgeSpec.model``/``rubric``/``temperature``: its score is a deterministic
  function of the (prompt, response) pair (its noise is a hash of the pair).
* Raters: vote ~ BetaBinomial(10, kappa Y, kappa (1 - Y)) i.i.d., so the mean vote
  / 10 is unbiased for Y up to rounding and clipping at 0 and 10.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy.stats import norm

from arena_cje.backends.base import Generation, JudgeSpec, Judgement, PolicySpec, TeacherForced
from arena_cje.backends.simulated.features import (
    PolicyFeatures,
    PromptFeatures,
    hash64,
    hash_unit,
    policy_features,
    prompt_features,
)
from arena_cje.backends.simulated.vocab import WORD_INDEX, WORDS
from arena_cje.backends.simulated.world import (
    DEFAULT_WORLD,
    OOV_ID,
    Tables,
    WorldModel,
    WorldParameters,
    judge_latent_from_stats,
    judge_score_from_latent,
    sequence_keys,
    to_uint64,
    text_stats,
    true_quality_from_stats,
)

#: Bump when the world's formulas change: it is part of the on-disk true-value cache key.
WORLD_VERSION = "sim-world-4"
_DOMAIN_GENERATE = 0x47454E
_DOMAIN_TRUTH = 0x545255
# Rows whose tables are built (and sampled) together. Small on purpose: a batch's temporaries
# (U x 9 x V float64 arrays) then stay in the CPU cache and allocator, which made a 10,000-prompt
# generation 3x faster than one 10,000-table batch; results do not depend on it (tables and draws
# are per row).
_TF_CHUNK = 256
_GEN_CHUNK = 256


class SimulatedBackend:
    """A seeded simulated LLM world: policies, judge, human raters and true policy values.

    Args:
        seed: The world's seed (its "model weights"); everything is a deterministic function of it.
        adversarial_keyword: A system prompt containing this word (case-insensitive) makes the
            policy confident-but-misleading.
        truth_draws_per_prompt: Minimum Monte-Carlo responses per prompt in ``true_value``. The
            estimand is a mean over prompts, so the truth's Monte-Carlo error is set by the total
            number of draws (below); this floor only keeps a within-prompt variance per prompt
            for the standard error when the prompt set is very large.
        truth_min_total_draws: Minimum total Monte-Carlo responses in ``true_value`` (more draws per
            prompt for small prompt sets): 100,000 draws give a Monte-Carlo s.e. of about 0.0005.
        cache_dir: Directory for the on-disk true-value cache (``None``: memory only).
        logit_scale: Multiplies word logits (peakier distributions, heavier importance weights).
        judge_noise_sd: SD of the judge's hashed noise on its latent (logit) scale.
        hidden_quality_sd: Weight of the quality the judge cannot see (``WorldModel.hidden_quality``)
            in the true quality's logit: the main source of judge-vs-truth disagreement.
        rater_concentration: kappa of the raters' beta-binomial votes (smaller = more disagreement).
        table_cache_size: Number of (prompt, policy) logit tables kept in memory (about 85 kB
            each at 256 max tokens); their log-sum-exp rows (144 bytes) are kept for 16 times
            as many, so a table rebuilt in a later stage skips its costliest step.
        truth_chunk: Sequences generated per vectorised chunk in ``true_value`` (results do not
            depend on it). About 2,000 is fastest: fewer steps of Python overhead than smaller
            chunks, while the chunk's stacked tables, searched at every step, stay in the CPU cache.
        world_parameters: Coefficients of the quality, judge and class-shift formulas
            (:class:`~arena_cje.backends.simulated.world.WorldParameters`, or a mapping of some of
            its fields to override); the default is the documented world.
    """

    def __init__(self, seed: int = 0, adversarial_keyword: str = "mislead", truth_draws_per_prompt: int = 10,
                 truth_min_total_draws: int = 100_000, cache_dir: str | None = None, logit_scale: float = 1.0,
                 judge_noise_sd: float = 0.1, hidden_quality_sd: float = 0.7, rater_concentration: float = 20.0, table_cache_size: int = 6000,
                 truth_chunk: int = 2048, world_parameters: WorldParameters | dict | None = None) -> None:
        self.seed = int(seed)
        self.adversarial_keyword = str(adversarial_keyword)
        self.truth_draws_per_prompt = int(truth_draws_per_prompt)
        self.truth_min_total_draws = int(truth_min_total_draws)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.logit_scale = float(logit_scale)
        self.judge_noise_sd = float(judge_noise_sd)
        self.hidden_quality_sd = float(hidden_quality_sd)
        self.rater_concentration = float(rater_concentration)
        self.truth_chunk = int(truth_chunk)
        if world_parameters is None:
            world_parameters = DEFAULT_WORLD
        elif not isinstance(world_parameters, WorldParameters):
            unknown = set(world_parameters) - set(asdict(DEFAULT_WORLD))
            if unknown:
                raise ValueError(f"simulated backend: unknown world_parameters {sorted(unknown)}; "
                                 f"known: {sorted(asdict(DEFAULT_WORLD))}")
            world_parameters = WorldParameters(**{**asdict(DEFAULT_WORLD), **dict(world_parameters)})
        self.world_parameters = world_parameters
        self.world = WorldModel(seed=self.seed, logit_scale=self.logit_scale, cache_size=table_cache_size,
                                params=world_parameters)
        self._truth_cache: dict[str, tuple[float, float]] = {}
        self._pf_cache: dict[str, PromptFeatures] = {}

    # ------------------------------------------------------------------ helpers
    def world_params(self) -> dict[str, object]:
        """Everything that determines the world's behaviour (used in cache keys)."""
        return {"version": WORLD_VERSION, "seed": self.seed, "adversarial_keyword": self.adversarial_keyword,
                "logit_scale": self.logit_scale, "judge_noise_sd": self.judge_noise_sd,
                "hidden_quality_sd": self.hidden_quality_sd,
                "rater_concentration": self.rater_concentration,
                "parameters": asdict(self.world_parameters)}

    def features(self, prompt: str) -> PromptFeatures:
        """Prompt features (memoised)."""
        pf = self._pf_cache.get(prompt)
        if pf is None:
            pf = prompt_features(prompt)
            if len(self._pf_cache) < 200_000:
                self._pf_cache[prompt] = pf
        return pf

    def _policy(self, policy: PolicySpec) -> PolicyFeatures:
        if policy.top_p != 1.0:
            raise ValueError(f"policy {policy.name}: top_p must be 1.0 for exact log-probs, got {policy.top_p}")
        return policy_features(policy.system_prompt, self.adversarial_keyword)

    def _group(self, prompts: list[str], policy: PolicySpec) -> tuple[list[Tables], np.ndarray]:
        pol = self._policy(policy)
        index: dict[str, int] = {}
        rows = np.empty(len(prompts), dtype=np.int64)
        for i, p in enumerate(prompts):
            rows[i] = index.setdefault(p, len(index))
        tabs = self.world.tables_many([self.features(p) for p in index], pol, policy.temperature, policy.max_tokens)
        return tabs, rows

    # ------------------------------------------------------------------ generation
    def generate(self, prompt: str, policy: PolicySpec, seed: int) -> Generation:
        """Sample one response (see ``generate_batch``)."""
        return self.generate_batch([prompt], policy, [seed])[0]

    def generate_batch(self, prompts: list[str], policy: PolicySpec, seeds: list[int]) -> list[Generation]:
        """Sample one response per (prompt, seed); a response depends only on its own prompt and seed.

        ``logprob`` is the sum of the sampled tokens' log-probs, EOT included (absent when cut at
        ``max_tokens``); ``n_tokens`` counts EOT.
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if not prompts:
            return []
        gens: list[Generation] = []
        for start in range(0, len(prompts), _GEN_CHUNK):
            gens += self._generate_chunk(prompts[start:start + _GEN_CHUNK], policy, seeds[start:start + _GEN_CHUNK])
        return gens

    def _generate_chunk(self, prompts: list[str], policy: PolicySpec, seeds: list[int]) -> list[Generation]:
        tabs, rows = self._group(prompts, policy)
        pkeys = [self.features(p).key for p in prompts]
        keys = sequence_keys(self.seed, _DOMAIN_GENERATE, to_uint64(pkeys), to_uint64([int(s) for s in seeds]))
        out = self.world.sample(tabs, rows, keys, policy.max_tokens, record_logprobs=True)
        gens = []
        for i, p in enumerate(prompts):
            n = int(out["length"][i])
            ended = bool(out["ended"][i])
            toks = out["tokens"][i, :n].tolist()
            tlp = out["token_logprobs"][i, : n + ended].tolist()
            gens.append(Generation(
                text=" ".join(map(WORDS.__getitem__, toks)),
                logprob=float(out["logprob"][i]),
                token_logprobs=tlp,
                n_tokens=n + ended,
                error=None,
                usage={"prompt_tokens": float(self.features(p).n_words), "completion_tokens": float(n + ended),
                       "truncated": float(not ended)},
            ))
        return gens

    # ------------------------------------------------------------------ teacher forcing
    def teacher_force(self, prompt: str, response: str, policy: PolicySpec, ended: bool | None = None) -> TeacherForced:
        """``log P_policy(response | prompt)``, EOT included unless the response has ``max_tokens`` words
        (or ``ended`` is ``False``: the response was cut at the logging policy's ``max_tokens``)."""
        return self.teacher_force_batch([prompt], [response], policy, None if ended is None else [ended])[0]

    def teacher_force_batch(self, prompts: list[str], responses: list[str], policy: PolicySpec,
                            ended: Sequence[bool] | None = None) -> list[TeacherForced]:
        """Teacher-force many pairs; identical float to the generation log-prob of the same text.

        ``ended`` (per response, from generation) says whether the response ended with EOT; when
        given, EOT is scored exactly for the ended ones. A response that ended but has
        ``max_tokens`` words or more is impossible under ``policy`` (error).
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if ended is not None and len(ended) != len(prompts):
            raise ValueError(f"{len(ended)} ended flags for {len(prompts)} prompts")
        pol = self._policy(policy)
        out: list[TeacherForced | None] = []
        scored: list[tuple[int, str, np.ndarray, bool]] = []  # (row, prompt, word ids, EOT scored)
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            words = response.split()
            word_ids = [WORD_INDEX.get(w, -1) for w in words]
            if -1 in word_ids:
                unknown = [w for w, k in zip(words, word_ids, strict=True) if k < 0]
                shown = ", ".join(repr(w) for w in dict.fromkeys(unknown[:5]))
                out.append(TeacherForced(logprob=None, n_tokens=None, error=(
                    f"out-of-vocabulary word(s) for the simulated model: {shown}"
                    f" ({len(unknown)} of {len(words)} words)")))
                continue
            if len(words) > policy.max_tokens:
                out.append(TeacherForced(logprob=None, n_tokens=None, error=(
                    f"response has {len(words)} tokens > max_tokens={policy.max_tokens}: impossible under"
                    f" policy {policy.name}")))
                continue
            include_eot = len(words) < policy.max_tokens
            if ended is not None:
                if ended[i] and not include_eot:
                    out.append(TeacherForced(logprob=None, n_tokens=None, error=(
                        f"response ended after {len(words)} tokens = max_tokens={policy.max_tokens}: no end of turn"
                        f" is possible there under policy {policy.name}")))
                    continue
                include_eot = bool(ended[i])
            out.append(None)
            scored.append((i, prompt, np.array(word_ids, dtype=np.int64), include_eot))
        # Only the entries on each path are computed (no tables), in chunks that keep the
        # prompts' (U, V) word arrays small; bitwise the tables' log-probs (WorldModel.score_paths).
        for start in range(0, len(scored), _TF_CHUNK):
            chunk = scored[start:start + _TF_CHUNK]
            totals = self.world.score_paths([self.features(p) for _, p, _, _ in chunk], pol, policy.temperature,
                                            policy.max_tokens, [ids for _, _, ids, _ in chunk],
                                            [eot for _, _, _, eot in chunk])
            for (i, _, ids, eot), total in zip(chunk, totals, strict=True):
                out[i] = TeacherForced(logprob=total, n_tokens=int(ids.size) + eot, error=None, tail_mass_bound=0.0)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ quality, judge, raters
    def _stats(self, prompts: list[str], responses: list[str], with_hidden: bool = True):
        splits = [r.split() for r in responses]
        tm = max([len(s) for s in splits] + [1])
        tokens = np.full((len(splits), tm), -1, dtype=np.int64)
        for i, s in enumerate(splits):
            tokens[i, : len(s)] = [WORD_INDEX.get(w, OOV_ID) for w in s]
        length = np.array([len(s) for s in splits], dtype=np.int64)
        pfs = [self.features(p) for p in prompts]
        topics = np.array([pf.topic for pf in pfs], dtype=np.int64)
        diff = np.array([pf.difficulty for pf in pfs])
        hidden = self.hidden_quality_sd * self.world.hidden_quality(tokens, length) if with_hidden else None
        return text_stats(tokens, length, topics), diff, hidden

    def true_quality_batch(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """True quality Y for many pairs (see ``world.true_quality_from_stats``)."""
        if not prompts:
            return np.zeros(0)
        st, diff, hidden = self._stats(prompts, responses)
        return true_quality_from_stats(st, diff, hidden, self.world_parameters)

    def true_quality(self, prompt: str, response: str) -> float:
        """The true quality Y(prompt, response) in [0, 1]; out-of-vocabulary words count as neutral words."""
        return float(self.true_quality_batch([prompt], [response])[0])

    def judge(self, prompt: str, response: str, judge: JudgeSpec) -> Judgement:
        """Judge score on a 0.05 grid of [0, 1], mapped to ``judge.scale`` (see ``judge_batch``)."""
        return self.judge_batch([prompt], [response], judge)[0]

    def judge_batch(self, prompts: list[str], responses: list[str], judge: JudgeSpec) -> list[Judgement]:
        """Deterministic, noisy, miscalibrated and length/misleading-biased judge scores.

        ``score = round_0.05(sigmoid(s_J + e) ** 0.7)`` with ``s_J`` from
        ``world.judge_latent_from_stats`` and ``e = judge_noise_sd * Phi^-1(hash(prompt, response))``,
        reported on ``judge.scale = (lo, hi)`` as ``lo + (hi - lo) * score``.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return []
        st, difficulty, _ = self._stats(prompts, responses, with_hidden=False)  # the judge cannot see it
        u = np.array([hash_unit(self.seed, "judge", p, r) for p, r in zip(prompts, responses, strict=True)])
        noise = self.judge_noise_sd * norm.ppf(u)
        lo, hi = judge.scale
        # The same judgement on the judge's own scale (0-10, 1-5, ...): an affine map of the unit score.
        scores = lo + (hi - lo) * judge_score_from_latent(judge_latent_from_stats(st, difficulty, self.world_parameters), noise,
                                                         self.world_parameters)
        return [Judgement(score=float(s), raw=json.dumps({"score": round(float(s), 4), "reason": "simulated judge"}),
                          error=None, usage={"prompt_tokens": 0.0})
                for s in scores]

    def rate(self, prompt: str, response: str, n_votes: int, seed: int) -> list[int]:
        """``n_votes`` integer 0-10 votes, each ``Binomial(10, p)`` with ``p ~ Beta(kappa Y, kappa (1 - Y))``.

        ``E[vote] / 10 = Y`` exactly (no clipping bias, so the oracle scale is the truth's scale);
        raters disagree most on middling responses (vote SD about 1.9 at Y = 0.5 for kappa = 20)
        and agree on clearly good or bad ones.
        """
        y = float(np.clip(self.true_quality(prompt, response), 1e-9, 1 - 1e-9))
        rng = np.random.default_rng([self.seed, int(seed) & 0xFFFFFFFF, hash64("rate", prompt, response)])
        a, b = self.rater_concentration * y, self.rater_concentration * (1.0 - y)
        # one rater after another, so the first k of n votes equal the k votes of a smaller call
        return [int(rng.binomial(10, rng.beta(a, b))) for _ in range(int(n_votes))]

    # ------------------------------------------------------------------ true values
    def _truth_key(self, policy: PolicySpec, prompts: list[str]) -> str:
        spec = {k: v for k, v in asdict(policy).items() if k not in ("name", "model")}
        h = hashlib.sha256()
        h.update(json.dumps({"world": self.world_params(), "policy": spec,
                             "draws": [self.truth_draws_per_prompt, self.truth_min_total_draws]},
                            sort_keys=True).encode())
        for p in prompts:
            h.update(hashlib.sha256(p.encode("utf-8", "surrogatepass")).digest())
        return h.hexdigest()[:32]

    def true_value(self, policy: PolicySpec, prompts: list[str]) -> float:
        """V(policy) = mean over ``prompts`` of E[Y | prompt] (Monte Carlo, see ``true_value_detail``)."""
        return self.true_value_detail(policy, prompts)[0]

    def true_value_detail(self, policy: PolicySpec, prompts: list[str]) -> tuple[float, float]:
        """(V_hat, s.e.) of the true policy value by fixed-seed Monte Carlo.

        ``m = max(truth_draws_per_prompt, ceil(truth_min_total_draws / P))`` responses per prompt;
        ``V_hat = (1/P) sum_i mean_j Y_ij`` and, prompts being fixed, ``s.e.^2 = (1/P^2) sum_i
        s_i^2 / m`` with ``s_i^2`` the within-prompt sample variance.  Draw ``j`` of a prompt uses the
        same random key under every policy (common random numbers).  Cached in memory and, with
        ``cache_dir``, on disk under a hash of world parameters, policy spec and prompts.
        """
        prompts = list(prompts)
        if not prompts:
            raise ValueError("true_value needs at least one prompt")
        key = self._truth_key(policy, prompts)
        if key in self._truth_cache:
            return self._truth_cache[key]
        path = Path(self.cache_dir) / f"true_value_{key}.json" if self.cache_dir else None
        if path is not None and path.is_file():
            rec = json.loads(path.read_text())
            res = (float(rec["value"]), float(rec["se"]))
            self._truth_cache[key] = res
            return res
        res = self._monte_carlo(policy, prompts)
        self._truth_cache[key] = res
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"value": res[0], "se": res[1], "policy": asdict(policy),
                                       "n_prompts": len(prompts), "world": self.world_params()}, indent=1))
            tmp.replace(path)
        return res

    def _monte_carlo(self, policy: PolicySpec, prompts: list[str]) -> tuple[float, float]:
        P = len(prompts)
        m = max(self.truth_draws_per_prompt, math.ceil(self.truth_min_total_draws / P), 2)
        pol = self._policy(policy)
        sums = np.zeros(P)
        sq = np.zeros(P)
        per_chunk = max(1, self.truth_chunk // m)
        for start in range(0, P, per_chunk):
            chunk = prompts[start:start + per_chunk]
            pfs = [self.features(p) for p in chunk]
            tabs = self.world.tables_many(pfs, pol, policy.temperature, policy.max_tokens)
            rows = np.repeat(np.arange(len(chunk)), m)
            draw = np.tile(np.arange(m), len(chunk))
            keys = sequence_keys(self.seed, _DOMAIN_TRUTH, to_uint64([pf.key for pf in pfs])[rows], draw)
            out = self.world.sample(tabs, rows, keys, policy.max_tokens, record_logprobs=False, with_logprob=False)
            topics = np.array([pf.topic for pf in pfs])[rows]
            diff = np.array([pf.difficulty for pf in pfs])[rows]
            hidden = self.hidden_quality_sd * self.world.hidden_quality(out["tokens"], out["length"])
            y = true_quality_from_stats(text_stats(out["tokens"], out["length"], topics), diff, hidden,
                                        self.world_parameters)
            y = y.reshape(len(chunk), m)
            sums[start:start + len(chunk)] = y.mean(axis=1)
            sq[start:start + len(chunk)] = y.var(axis=1, ddof=1)
        value = float(sums.mean())
        se = float(math.sqrt(sq.sum() / m) / P)
        return value, se
