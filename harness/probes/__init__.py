"""Forgetting probes: what fine-tuning cost the model in general ability.

After a run is scored, the in-memory tuned model is probed (lm-eval's HFLM wraps the model
object itself, so peft, merged and 4-bit models are probed exactly as they were trained), and
each probe's score is compared with the untrained base model's.

Probes (`probes:` in a matrix; `harness schema` lists their options and defaults):
- multiple choice, zero-shot cloze through lm-eval (harness/lm_eval_tasks/), decoders:
  `mmlu` (knowledge, stratified over subjects), `strategyqa`, `wikihow`, `social_iqa` (BIG-bench);
- general-text perplexity through lm-eval (loglikelihood_rolling), decoders: `wiki` (Wikipedia
  articles), `hamlet`;
- `mmlu_topics`, a frozen-feature linear probe for any family (encoders especially): logistic
  regression on mean-pooled last hidden states, predicting the MMLU supercategory (STEM,
  humanities, social sciences, other) of a question - a task unrelated to the fine-tuning task,
  so a drop means the representation lost general information. Encoders cannot run lm-eval
  probes: a run of an encoder whose matrix lists no probe for encoders gets `mmlu_topics`;
- `lm_eval:<task>`: any built-in lm-eval task (hellaswag, arc_easy, ...); only then is lm-eval's
  task index loaded (~10 s), and its data comes from the hub (needs internet).

Sign convention: forgetting = how much worse the tuned model is than the base, in the metric's
own units - positive means the model forgot, negative means it improved:
- higher-is-better metrics (accuracy): forgetting = base - tuned (accuracy points lost);
- lower-is-better metrics (bits per byte): forgetting = tuned - base. Bits per byte is log2 of
  the per-byte perplexity, so this is the log-ratio of the perplexities, log2(ppl_tuned /
  ppl_base) per byte, i.e. the change in cross-entropy on general text (peft's measure).
Each run also gets an aggregate, probe `mean`: the mean forgetting over its accuracy probes
(split `acc`) and over its perplexity probes (split `bits_per_byte`).

Stored per probe (metrics kind/name/split): `probe/<probe>/<metric>` the tuned score with
lm-eval's stderr, `probe_base/<probe>/<metric>` the base score, `forgetting/<probe>/<metric>`
with stderr sqrt(se_tuned^2 + se_base^2) (conservative: it ignores that both are scored on
the same items). Base scores are computed once per (model, probe, probe config) and cached in
the store (table probe_baselines), which only the sweep writes (baselines.py says how they
travel); the config hash covers the probe's options, its data source pin, its task file, the
compute dtype and device and the library versions.

Before a trained model is probed, its logits on a fixed input are compared with the logits the
same run's base model gave before the method was applied: if nothing changed, the run fails
(lm-eval issues #511, #808, #2294: adapters that were never applied score exactly as the base).

Rooms: options.py (option schemas), registry.py (the probes, matrix entries), data.py (data
preparation and the prepared folders), scoring.py (lm-eval, the feature probe, the logits guard),
baselines.py (base scores, the run step, forgetting).
"""

from harness.probes.baselines import (ProbeRun, aggregate_group, baselines_for, baselines_of, clear_handoff,
                                      combined_stderr, config_hash,
                                      forgetting, known_baselines, record_scores, run, store_baselines)
from harness.probes.data import PROBE_VERSION, ProbeError, prepare
from harness.probes.options import (BuiltinOptions, ChoiceOptions, FeatureOptions, MMLUOptions, Options,
                                    TextOptions, YesNoOptions)
from harness.probes.registry import (BUILTIN_PREFIX, DECODERS, FEATURES, LM_EVAL, MEAN, PROBES, TASKS_DIR, Probe,
                                     ProbeConfig, for_family, get, parse_entries, unknown_probe_message)
from harness.probes.scoring import (GUARD_ATOL, ModelUnchanged, Score, Scorer, check_changed, feature_score,
                                    fingerprint, lm_eval_score, logits_change, make_lm)

__all__ = [
    "aggregate_group", "baselines_for", "baselines_of", "check_changed", "clear_handoff", "combined_stderr",
    "config_hash", "feature_score", "fingerprint", "for_family", "forgetting", "get", "known_baselines",
    "lm_eval_score", "logits_change", "make_lm", "parse_entries", "prepare", "record_scores", "run",
    "store_baselines", "unknown_probe_message", "BUILTIN_PREFIX", "BuiltinOptions", "ChoiceOptions", "DECODERS",
    "FEATURES", "FeatureOptions", "GUARD_ATOL", "LM_EVAL", "MEAN", "MMLUOptions", "ModelUnchanged", "Options",
    "PROBES", "PROBE_VERSION", "Probe", "ProbeConfig", "ProbeError", "ProbeRun", "Score", "Scorer", "TASKS_DIR",
    "TextOptions", "YesNoOptions",
]
