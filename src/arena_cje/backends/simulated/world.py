"""The simulated language model: per-(prompt, policy) logit tables, sampling and exact log-probs.

Model.  The next-token logit of word ``v`` after a token of class ``s`` (``s = START`` at the first
step) is

    z[s, v] = logit_scale * (B[c] + A[s, c] + shift_policy[c] + shift_prompt[c] + w[v] + e_prompt[v]),
    c = class of v relative to the prompt's topic,

with ``B`` base class logits, ``A`` class transitions, ``w`` the world's word logits (seeded Zipf-like
weights minus ``log |class|``, so a class's total mass does not grow with its size) and ``e_prompt``
a per-prompt perturbation ~ N(0, prompt_noise_sd^2), four times wider on error words (a prompt's
likely hallucinations stay likely at low temperature).  ``shift_prompt``: errors ``+1.2 d - 0.4``,
reasoning ``+0.5 d`` (``d`` = difficulty), and errors ``-0.5 d`` more under step-by-step prompts
(these and the quality/judge coefficients: :class:`~.parameters.WorldParameters`).  The end-of-turn (EOT) logit depends on the position ``t`` (number
of words already produced):

    z_eot[s, t] = logsumexp_v z[s, v] + A_eot[s] + eot_slope * log((t + 1) / L),

``L`` being the prompt's target length times the policy's length multiplier, so that at ``T = 1`` the
EOT hazard is ``sigmoid(A_eot[s] + eot_slope log((t+1)/L))``.  At temperature ``T`` the step
distribution is ``log_softmax([z[s, :], z_eot[s, t]] / T)``; with ``logZ[s, t] =
logaddexp(logsumexp_v z[s, v] / T, z_eot[s, t] / T)`` the exact log-prob of a word is
``z[s, v] / T - logZ[s, t]`` and of EOT ``z_eot[s, t] / T - logZ[s, t]``.

Exactness.  Tables are computed one prompt at a time (same array shapes every time), cached, and
the per-token log-prob is always the single subtraction above on table entries; sequence totals are
sums in token order starting from 0.0.  Generation and teacher forcing therefore agree bitwise.

Sampling at step ``t``: EOT if ``u < P(EOT)``, else the word at ``(u - P(EOT)) / (1 - P(EOT))`` of
the words' conditional CDF (inverse-CDF sampling with one uniform ``u``).  Sampling is counter-based: the uniform for step ``t`` of a sequence is ``splitmix64(key + (t + 1) G)``
with a per-sequence key, so a sequence's draw does not depend on the batch it is generated in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from arena_cje.backends.simulated.counters import MASK64, mix64, mix64_py, sequence_keys, step_uniforms, to_uint64  # noqa: F401
from arena_cje.backends.simulated.features import PolicyFeatures, PromptFeatures
from arena_cje.backends.simulated.parameters import DEFAULT_WORLD, WorldParameters
# The quality and judge formulas, the parameters and the counters are re-exported: the simulated
# backend, the tests and users import them from ``world``.
from arena_cje.backends.simulated.quality import (  # noqa: F401
    OOV_ID,
    UNKNOWN,
    TextStats,
    judge_latent_from_stats,
    judge_score_from_latent,
    quality_logit,
    text_stats,
    true_quality_from_stats,
)
from arena_cje.backends.simulated.vocab import (
    ERR,
    N_CLASSES,
    N_WORDS,
    REA,
    WORD_BASE_CLASS,
    word_classes,
)

START = N_CLASSES          # state index of "no previous token"
N_STATES = N_CLASSES + 1

#: Base class logits: log of the class shares of a plain T = 1 response.
BASE_CLASS_LOGIT = np.log(np.array([0.28, 0.30, 0.02, 0.12, 0.10, 0.08, 0.015, 0.0005]))
#: Class transitions A[prev_state, class] (rows: FUNC, ON, OFF, GEN, FIL, REA, ERR, MIS, START).
TRANSITION = np.array([
    # FUNC  ON    OFF   GEN   FIL   REA   ERR   MIS
    [-1.5, 0.4, 0.0, 0.3, -0.3, -0.3, 0.0, 0.0],   # after FUNC
    [0.3, -0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],     # after ON
    [0.3, -0.3, 0.3, 0.0, 0.0, 0.0, 0.2, 0.0],     # after OFF
    [0.3, 0.0, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0],     # after GEN
    [0.0, 0.0, 0.0, 0.0, -0.5, 0.0, 0.0, 0.0],     # after FIL
    [0.2, 0.3, 0.0, 0.0, -0.3, -1.5, 0.0, 0.0],    # after REA
    [0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.7, 0.0],      # after ERR (errors cluster)
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5],      # after MIS
    [-0.5, 0.0, 0.0, 0.0, 0.6, 0.3, 0.0, 0.0],     # START
])
#: EOT offset per previous state: hard to stop after a function word, impossible-ish at START.
EOT_OFFSET = np.array([-4.0, -1.0, -1.5, -1.5, -2.0, -2.0, -1.5, -1.0, -7.0])


def _lse_tables(x: np.ndarray) -> np.ndarray:
    """Log-sum-exp over the last axis of each (S, V) table of a (U, S, V) stack, ``m + log(sum(exp(x - m)))``.

    The sum runs strictly left to right (the last column of a cumulative sum), on purpose: the
    tables must stay bitwise those of the original one-table builder, whose Fortran-ordered arrays
    made numpy add the words in that order (a plain ``sum`` over a C-ordered last axis adds
    pairwise, in another order), and cached true values and the pinned test rely on them.
    """
    m = x.max(axis=2)
    return m + np.log(np.cumsum(np.exp(x - m[:, :, None]), axis=2)[:, :, -1])


def _check_table_arguments(T: float, max_tokens: int) -> None:
    if not T > 0:
        raise ValueError(f"temperature must be > 0 for sampling with log-probs, got {T}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")


_FEW_ROWS = 4  # up to this many rows, ``hidden_quality`` hashes word by word in Python


def _hash_words_py(seed: int, words: list[int]) -> int:
    """The 64-bit hash ``hidden_quality`` builds for one row of word ids (negative ids: ``OOV_ID``)."""
    acc = (seed & MASK64) ^ 0x41DD3
    for w in words:
        acc = mix64_py(acc ^ (w if w >= 0 else OOV_ID))
    return acc


@dataclass(frozen=True)
class Tables:
    """Logit tables of one (prompt, policy) pair.

    Attributes:
        zT: ``z[s, v] / T``, shape (N_STATES, N_WORDS).
        logZ: Log normaliser per state and position, shape (N_STATES, max_tokens).
        logp_eot: EOT log-prob per state and position, shape (N_STATES, max_tokens).
        cdf: Cumulative probabilities of the words given "not EOT", shape (N_STATES, N_WORDS),
            last column exactly 1.
        cls: Class of every word relative to the prompt's topic, shape (N_WORDS,).
    """

    zT: np.ndarray
    logZ: np.ndarray
    logp_eot: np.ndarray
    cdf: np.ndarray
    cls: np.ndarray


class WorldModel:
    """The world's fixed "weights" and the table builder / sampler.

    Args:
        seed: World seed (word weights, prompt perturbations, sampling keys, judge noise).
        logit_scale: Multiplies all word logits (larger = peakier distributions, heavier
            importance weights between temperatures).
        word_noise_sd: SD of the seeded per-word logit noise.
        prompt_noise_sd: SD of the hashed per-(prompt, word) logit perturbation.
        eot_slope: Steepness of the end-of-turn hazard around the target length.
        cache_size: Number of (prompt, policy) tables kept in memory (LRU).
        params: The world's formula coefficients (:class:`WorldParameters`).
    """

    def __init__(self, seed: int = 0, logit_scale: float = 1.0, word_noise_sd: float = 0.35,
                 prompt_noise_sd: float = 0.25, eot_slope: float = 4.0, cache_size: int = 6000,
                 params: WorldParameters = DEFAULT_WORLD) -> None:
        self.seed = int(seed)
        self.params = params
        self.logit_scale = float(logit_scale)
        self.prompt_noise_sd = float(prompt_noise_sd)
        self.eot_slope = float(eot_slope)
        self.cache_size = int(cache_size)
        rng = np.random.default_rng([self.seed, 0x5EED])
        # Zipf-like weights within each class (rank order is a seeded permutation), centred.
        w = np.zeros(N_WORDS)
        for c in range(N_CLASSES):
            idx = np.flatnonzero(WORD_BASE_CLASS == c)
            if idx.size == 0:  # OFF exists only relative to a prompt's topic
                continue
            ranks = rng.permutation(idx.size) + 1
            wc = -params.zipf_exponent * np.log(ranks) + rng.normal(0.0, word_noise_sd, idx.size)
            w[idx] = wc - wc.mean()
        self.word_logit = w
        self._cache: OrderedDict[tuple, Tables] = OrderedDict()
        self._word_cache: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        # (prompt, policy, T) -> the table's two log-sum-exp rows (2 x N_STATES floats): a table
        # rebuilt after the LRU dropped it (a 10,000-prompt run needs each one in three stages)
        # skips its two most expensive steps, with bitwise the same result.
        self._lse_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def hidden_quality(self, tokens: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Quality the judge cannot see: ``h = Phi^-1(hash(seed, w_1, ..., w_n))``, about N(0, 1).

        A deterministic function of the word sequence, so it is part of the text's true quality,
        yet pseudo-random: independent of the policy, the length and every word-class count. The
        judge-to-truth relation given (judge score, length) is therefore the same for every
        ordinary policy, as CJE's transport assumption requires.

        Args:
            tokens: (B, Tm) token ids (``OOV_ID`` for unknown words; entries beyond ``length`` ignored).
            length: (B,) words per row.
        """
        Tm = tokens.shape[1]
        if tokens.shape[0] <= _FEW_ROWS:  # one rater's item: Python ints beat a numpy call per word
            acc = np.array([_hash_words_py(self.seed, tokens[i, : int(length[i])].tolist())
                            for i in range(tokens.shape[0])], dtype=np.uint64)
            return ndtri(((acc >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53)))
        acc = np.full(tokens.shape[0], np.uint64(self.seed) ^ np.uint64(0x41DD3), dtype=np.uint64)
        rows = np.arange(tokens.shape[0])
        for j in range(Tm):
            rows = rows[length[rows] > j]  # only the rows still inside their text
            if not rows.size:
                break
            col = tokens[rows, j]
            acc[rows] = mix64(acc[rows] ^ to_uint64(np.where(col >= 0, col, OOV_ID)))
        u = ((acc >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))
        return ndtri(u)

    # ------------------------------------------------------------------ tables
    def tables(self, pf: PromptFeatures, pol: PolicyFeatures, temperature: float, max_tokens: int) -> Tables:
        """The (cached) tables of a prompt under a policy; see the module docstring for formulas."""
        key = (pf, pol, float(temperature), int(max_tokens))
        tab = self._cache.get(key)
        if tab is not None:
            self._cache.move_to_end(key)
            return tab
        tab = self._build(pf, pol, float(temperature), int(max_tokens))
        self._cache[key] = tab
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return tab

    def tables_many(self, pfs: list[PromptFeatures], pol: PolicyFeatures, temperature: float,
                    max_tokens: int) -> list[Tables]:
        """``[self.tables(pf, ...) for pf in pfs]``, building the missing tables in one vectorised batch.

        A batch-built table is bitwise the one ``tables`` builds alone (the same element-wise
        operations and last-axis reductions, row by row), so results never depend on batching.
        """
        T, mt = float(temperature), int(max_tokens)
        out: list[Tables | None] = []
        missing: dict[PromptFeatures, int] = {}
        for pf in pfs:
            tab = self._cache.get((pf, pol, T, mt))
            if tab is not None:
                self._cache.move_to_end((pf, pol, T, mt))
            elif pf not in missing:
                missing[pf] = len(missing)
            out.append(tab)
        if missing:
            built = self._build_many(list(missing), pol, T, mt)
            for pf, tab in zip(missing, built, strict=True):
                self._cache[(pf, pol, T, mt)] = tab
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            out = [tab if tab is not None else built[missing[pf]] for tab, pf in zip(out, pfs, strict=True)]
        return out  # type: ignore[return-value]

    def _prompt_words(self, pf: PromptFeatures) -> tuple[np.ndarray, np.ndarray]:
        """(word classes, word logits ``w[v] - log |class(v)| + e_prompt[v]``) of a prompt (cached)."""
        hit = self._word_cache.get(pf.key)
        if hit is not None and hit[0] == pf.topic:
            return hit[1], hit[2]
        cls = word_classes(pf.topic)
        counts = np.bincount(cls, minlength=N_CLASSES)
        prng = np.random.default_rng([self.seed, pf.key & 0xFFFFFFFF, pf.key >> 32])
        e_prompt = prng.normal(0.0, self.prompt_noise_sd, N_WORDS)
        # hallucinations are prompt-specific and can be likely: error words get a wider spread, so
        # errors do not vanish at low temperature
        e_prompt[cls == ERR] *= self.params.error_noise_multiplier
        word = self.word_logit - np.log(counts[cls]) + e_prompt
        if len(self._word_cache) >= 4 * self.cache_size:
            self._word_cache.clear()
        self._word_cache[pf.key] = (pf.topic, cls, word)
        return cls, word

    def _build(self, pf: PromptFeatures, pol: PolicyFeatures, T: float, max_tokens: int) -> Tables:
        return self._build_many([pf], pol, T, max_tokens)[0]

    def _build_many(self, pfs: list[PromptFeatures], pol: PolicyFeatures, T: float, max_tokens: int) -> list[Tables]:
        """Tables of several prompts under one policy, arrays (U, S, V) at once (formulas: module docstring)."""
        _check_table_arguments(T, max_tokens)
        cls, word, class_logit = self._logit_parts(pfs, pol)
        z = self._logits(cls, word, class_logit)                                  # (U, S, V)
        zT = z / T
        lse1, lseT = self._log_sum_exps(pfs, pol, T, z, zT)                       # (U, S) each
        z_eot = (lse1[:, :, None] + EOT_OFFSET[None, :, None]
                 + self.eot_slope * self._log_position(pfs, pol, max_tokens))
        zeT = z_eot / T
        logZ = np.logaddexp(lseT[:, :, None], zeT)
        logp_eot = zeT - logZ
        q = np.exp(zT - lseT[:, :, None])
        cdf = np.cumsum(q, axis=2)
        cdf /= cdf[:, :, -1:]
        cdf[:, :, -1] = 1.0
        for arr in (zT, logZ, logp_eot, cdf):
            arr.setflags(write=False)
        cls64 = cls.astype(np.int64)
        return [Tables(zT=zT[u], logZ=logZ[u], logp_eot=logp_eot[u], cdf=cdf[u], cls=cls64[u]) for u in range(len(pfs))]

    def _logit_parts(self, pfs: list[PromptFeatures],
                     pol: PolicyFeatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Word classes (U, V), word logits (U, V) and class logits (U, S, C) of prompts under a policy."""
        words = [self._prompt_words(pf) for pf in pfs]
        cls = np.stack([w[0] for w in words])                                       # (U, V)
        word = np.stack([w[1] for w in words])                                      # (U, V)
        d = np.array([pf.difficulty for pf in pfs])
        wp = self.params
        shift = np.tile(np.asarray(pol.class_shift, dtype=np.float64), (len(pfs), 1))  # (U, C)
        shift[:, ERR] += wp.error_difficulty_shift * d + wp.error_shift_offset    # harder prompts -> more errors
        shift[:, REA] += wp.reasoning_difficulty_shift * d                        # ... and more reasoning
        if pol.cot:
            shift[:, ERR] += wp.cot_error_difficulty_shift * d    # step-by-step helps most where it is hard
        class_logit = BASE_CLASS_LOGIT[None, None, :] + TRANSITION[None] + shift[:, None, :]   # (U, S, C)
        return cls, word, class_logit

    def _logits(self, cls: np.ndarray, word: np.ndarray, class_logit: np.ndarray) -> np.ndarray:
        """The full word logits ``z`` (U, S, V) at temperature 1."""
        per_word = np.ascontiguousarray(np.take_along_axis(
            class_logit, np.broadcast_to(cls[:, None, :], (len(cls), N_STATES, N_WORDS)), axis=2))
        return self.logit_scale * (per_word + word[:, None, :])

    @staticmethod
    def _log_position(pfs: list[PromptFeatures], pol: PolicyFeatures, max_tokens: int) -> np.ndarray:
        """``log((t + 1) / L)`` of the EOT logit, shape (U, 1, max_tokens)."""
        L = np.maximum(np.array([pf.target_length * pol.length_mult for pf in pfs]), 2.0)
        t = np.arange(max_tokens, dtype=np.float64)
        return np.log((t[None, None, :] + 1.0) / L[:, None, None])

    def _known_log_sum_exps(self, pfs: list[PromptFeatures], pol: PolicyFeatures, T: float, cls: np.ndarray,
                            word: np.ndarray, class_logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tables' two log-sum-exp rows (U, S) each: remembered ones, the others from their full logits."""
        known = [self._lse_cache.get((pf, pol, T)) for pf in pfs]
        missing = [i for i, hit in enumerate(known) if hit is None]
        lse1 = np.empty((len(pfs), N_STATES))
        lseT = np.empty((len(pfs), N_STATES))
        for i, hit in enumerate(known):
            if hit is not None:
                lse1[i], lseT[i] = hit
        if missing:
            z = self._logits(cls[missing], word[missing], class_logit[missing])
            lse1[missing], lseT[missing] = self._log_sum_exps([pfs[i] for i in missing], pol, T, z, z / T)
        return lse1, lseT

    def _log_sum_exps(self, pfs: list[PromptFeatures], pol: PolicyFeatures, T: float, z: np.ndarray,
                      zT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(_lse_tables(z), _lse_tables(zT))``, remembered per (prompt, policy, T) (bounded)."""
        keys = [(pf, pol, T) for pf in pfs]
        known = [self._lse_cache.get(k) for k in keys]
        missing = [i for i, hit in enumerate(known) if hit is None]
        if len(missing) == len(keys):
            lse1, lseT = _lse_tables(z), _lse_tables(zT)
        else:
            lse1 = np.empty(z.shape[:2])
            lseT = np.empty(z.shape[:2])
            for i, hit in enumerate(known):
                if hit is not None:
                    lse1[i], lseT[i] = hit
            if missing:
                lse1[missing], lseT[missing] = _lse_tables(z[missing]), _lse_tables(zT[missing])
        if len(self._lse_cache) + len(missing) > 16 * max(self.cache_size, 1):
            self._lse_cache.clear()
        for i in missing:
            self._lse_cache[keys[i]] = (lse1[i].copy(), lseT[i].copy())
        return lse1, lseT

    # ------------------------------------------------------------------ sampling
    def sample(self, tabs: list[Tables], rows: np.ndarray, keys: np.ndarray, max_tokens: int,
               record_logprobs: bool = True, with_logprob: bool = True) -> dict[str, np.ndarray]:
        """Sample one sequence per entry of ``rows`` (index into ``tabs``), all steps vectorised.

        Returns a dict with ``tokens`` (B, max length) int16 (-1 padding), ``length`` (words),
        ``ended`` (EOT sampled; False = cut at ``max_tokens``), ``logprob`` (sum incl. EOT; None
        when ``with_logprob`` is False, which the true-value Monte Carlo uses) and, if requested,
        ``token_logprobs`` (B, max_tokens + 1), NaN-padded.
        """
        B = rows.size
        U = len(tabs)
        V = N_WORDS
        S = N_STATES
        # Flat tables, indexed by one integer per draw (row r = u * S + s): one gather per lookup.
        if with_logprob:  # the word log-probs' tables (the true-value Monte Carlo needs none)
            zT = np.stack([tb.zT for tb in tabs]).ravel()             # [(u S + s) V + v]
            logZ = np.stack([tb.logZ for tb in tabs]).ravel()         # [(u S + s) Tm + t]
        lpe = np.stack([tb.logp_eot for tb in tabs]).ravel()          # [(u S + s) Tm + t]
        cls = np.stack([tb.cls for tb in tabs]).ravel()               # [u V + v]
        Tm = tabs[0].logZ.shape[1] if U else max_tokens
        offs = np.arange(U * S, dtype=np.float64)[:, None]
        flat_cdf = (np.concatenate([tb.cdf for tb in tabs]) + offs).ravel()  # rows u*S + s, globally sorted
        tokens = np.full((B, max_tokens), -1, dtype=np.int16)
        length = np.full(B, max_tokens, dtype=np.int64)
        ended = np.zeros(B, dtype=bool)
        record_logprobs = record_logprobs and with_logprob
        total = np.zeros(B, dtype=np.float64) if with_logprob else None
        tlp = np.full((B, max_tokens + 1), np.nan) if record_logprobs else None
        act = np.arange(B)
        u_rows = rows.astype(np.int64)
        r_act = u_rows * S + START      # row u * S + s of every active draw
        keys_act = keys
        for t in range(max_tokens):
            if act.size == 0:
                break
            u = step_uniforms(keys_act, t)
            lp_e = lpe[r_act * Tm + t]
            p_e = np.exp(lp_e)
            stop = u < p_e
            if stop.any():
                a_s = act[stop]
                if total is not None:
                    total[a_s] += lp_e[stop]
                if tlp is not None:
                    tlp[a_s, t] = lp_e[stop]
                length[a_s] = t
                ended[a_s] = True
                go = ~stop
                act, r_act, keys_act, u, p_e = act[go], r_act[go], keys_act[go], u[go], p_e[go]
                if act.size == 0:
                    break
            u2 = np.minimum((u - p_e) / (1.0 - p_e), 1.0 - 2.0 ** -53)
            idx = np.searchsorted(flat_cdf, r_act + u2, side="right") - r_act * V
            tok = np.clip(idx, 0, V - 1)
            if total is not None:
                lp = zT[r_act * V + tok] - logZ[r_act * Tm + t]
                total[act] += lp
                if tlp is not None:
                    tlp[act, t] = lp
            tokens[act, t] = tok
            u_act = r_act // S
            r_act = u_act * S + cls[u_act * V + tok]
        tm = int(length.max()) if B else 0
        tokens = tokens[:, :tm]
        return {"tokens": tokens, "length": length, "ended": ended, "logprob": total, "token_logprobs": tlp}

    # ------------------------------------------------------------------ teacher forcing
    def score_paths(self, pfs: list[PromptFeatures], pol: PolicyFeatures, temperature: float, max_tokens: int,
                    paths: list[np.ndarray], include_eot: list[bool]) -> list[float]:
        """``score(self.tables(pf, ...), ids, eot)[0]`` for each (prompt, word ids, EOT flag), without the tables.

        Teacher forcing reads one entry of ``zT``, ``logZ`` (and ``logp_eot``) per word on the path;
        they are computed for those entries only, from the same formulas in the same order as the
        table builder (element-wise operations; the log-sum-exp rows are the remembered or freshly
        computed full ones), so every log-prob is bitwise the table's.
        """
        T, mt = float(temperature), int(max_tokens)
        _check_table_arguments(T, mt)
        if not pfs:
            return []
        index: dict[PromptFeatures, int] = {}
        rows = np.array([index.setdefault(pf, len(index)) for pf in pfs], dtype=np.int64)
        uniq = list(index)
        cls, word, class_logit = self._logit_parts(uniq, pol)
        lse1, lseT = self._known_log_sum_exps(uniq, pol, T, cls, word, class_logit)
        log_pos = self._log_position(uniq, pol, mt)[:, 0, :]                      # (U, max_tokens)
        n = np.array([p.size for p in paths], dtype=np.int64)
        steps = n + np.asarray(include_eot, dtype=np.int64)                       # entries per path
        u = np.repeat(rows, steps)
        pos = np.arange(steps.sum()) - np.repeat(np.cumsum(steps) - steps, steps)  # 0, 1, ... within a path
        is_eot = pos == np.repeat(n, steps)
        ids = np.zeros(u.size, dtype=np.int64)
        ids[~is_eot] = np.concatenate([*paths, np.zeros(0, dtype=np.int64)])
        cls_next = cls[u, ids]                                                    # the class each word leads to
        state = np.full(u.size, START, dtype=np.int64)                            # the state before each step
        later = pos > 0
        state[later] = cls_next[np.flatnonzero(later) - 1]
        zeT = ((lse1[u, state] + EOT_OFFSET[state]) + self.eot_slope * log_pos[u, pos]) / T
        logZ = np.logaddexp(lseT[u, state], zeT)
        zT = (self.logit_scale * (class_logit[u, state, cls_next] + word[u, ids])) / T
        lps = np.where(is_eot, zeT, zT) - logZ
        totals, start = [], 0
        for k in steps.tolist():  # summed left to right from 0.0, as ``sample`` and ``score`` do
            total = 0.0
            for x in lps[start:start + k].tolist():
                total += x
            totals.append(total)
            start += k
        return totals

    @staticmethod
    def score(tab: Tables, ids: np.ndarray, include_eot: bool) -> tuple[float, np.ndarray]:
        """Exact log-prob of word ids (then EOT if ``include_eot``) under ``tab``.

        Returns (total, per-token log-probs); the total is summed left to right from 0.0, exactly as
        ``sample`` accumulates it.
        """
        n = ids.size
        states = np.empty(n + 1, dtype=np.int64)
        states[0] = START
        states[1:] = tab.cls[ids]
        pos = np.arange(n)
        lps = tab.zT[states[:n], ids] - tab.logZ[states[:n], pos]
        if include_eot:
            lps = np.append(lps, tab.logp_eot[states[n], n])
        total = 0.0
        for x in lps.tolist():
            total += x
        return total, lps
